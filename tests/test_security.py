"""Security and good citizenship: no network unless a live source is configured, secrets never
written or printed, files only under the output directory, no signal handlers replaced, no lock
files, no writes into the installed package.
"""

from __future__ import annotations

import json
import signal
import socket
import sys
import warnings
from pathlib import Path

import pytest

from tests.fakes.loopback import LoopbackServer, QuietHandler

import greencallbacks
from greencallbacks import cli
from greencallbacks.carbon import Carbon
from greencallbacks.meter import Meter
from greencallbacks.records import read_records
from greencallbacks.tracker import Tracker
from tests.fakes.scripted import FakeClock, ScriptedSensor

REPO = Path(__file__).resolve().parents[1]
PACKAGE_DIR = Path(greencallbacks.__file__).resolve().parent
SECRET = "gc-secret-5f0e2b7d9a41c3"  # unique: any occurrence anywhere is a leak


def _lightning():
    pytest.importorskip("lightning")
    sys.path.insert(0, str(REPO / "tests"))
    from lightning_models import flavour, loaders, trainer_kwargs

    L, EnergyCallback, TinyModel = flavour("lightning.pytorch")
    return L, EnergyCallback, TinyModel, loaders, trainer_kwargs


def tree(root: Path) -> dict[str, float]:
    """Every file under ``root`` with its modification time."""
    out = {}
    for path in root.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            out[str(path.relative_to(root))] = path.stat().st_mtime_ns
    return out


def scripted_run(output_dir: Path | None, carbon: Carbon | None = None) -> Tracker:
    clock = FakeClock(start=0.0)
    tracker = Tracker(output_dir=output_dir, carbon=carbon or Carbon(intensity=250), run_id=f"security-{output_dir.name if output_dir else None}")
    tracker.start(Meter([ScriptedSensor("gpu0", clock)], fallback=None, clock=clock, wall_clock=lambda: 1.7e9 + clock()))
    for epoch in range(3):
        tracker.begin("train", epoch)
        tracker.add_samples(16)
        clock.advance(30)
        tracker.end("train")
    tracker.finish()
    return tracker


# ------------------------------------------------------------------------------ network
@pytest.fixture
def no_network(monkeypatch):
    """Fail on any outgoing connection or name lookup made from Python."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[1:] if args else kwargs)
        raise AssertionError(f"network access attempted: {args[1:]!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, *a))
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: refuse(None, *a))
    return attempts


@pytest.mark.slow
def test_training_demo_and_report_use_no_network(tmp_path, no_network, capsys):
    L, EnergyCallback, TinyModel, loaders, trainer_kwargs = _lightning()
    callback = EnergyCallback(country="FR", output_dir=tmp_path / "energy")
    loggers = [L.loggers.CSVLogger(tmp_path, name="csv"), L.loggers.TensorBoardLogger(tmp_path, name="tb")]
    trainer = L.Trainer(max_epochs=2, logger=loggers, callbacks=[callback], **trainer_kwargs())
    trainer.fit(TinyModel(), *loaders())
    trainer.test(TinyModel(), loaders()[1], verbose=False)
    assert read_records(tmp_path / "energy")

    from greencallbacks.demo import run_demo

    run_demo(tmp_path / "demo", epochs=1, samples=256, quiet=True, zone="US-CA")
    for argv in (["report", str(tmp_path / "energy")], ["report", str(tmp_path / "demo"), "--format", "json",
                                                        "--equivalents", "--compare-zones", "FR,DE"],
                 ["lifecycle", str(tmp_path / "demo"), "--inferences", "1000"], ["devices", "--json"],
                 ["estimate", "--hours", "2", "--gpu", "H100 SXM", "--country", "DE"]):
        assert cli.main(argv) == 0
    capsys.readouterr()
    assert no_network == []


def test_a_default_carbon_and_every_static_location_use_no_network(no_network):
    for kwargs in ({}, {"country": "FR"}, {"zone": "US-CA"}, {"region": "gcp:europe-west1"}, {"region": "aws:us-east-1"}):
        scripted_run(None, Carbon(**kwargs))
    assert no_network == []


# ------------------------------------------------------------------------------ secrets
class _LeakyApi:
    """A loopback server that fails every request and echoes every header into its error body."""

    def __init__(self):
        class Handler(QuietHandler):
            def do_GET(self):
                body = ("denied: " + json.dumps(dict(self.headers)) + " path " + self.path).encode()
                self.send_response(401)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)


        self._server = LoopbackServer(Handler)
        self.url = self._server.url

    def close(self):
        self._server.close()


def _every_text(root: Path) -> str:
    texts = []
    for path in root.rglob("*"):
        if path.is_file():
            texts.append(path.read_bytes().decode("utf-8", errors="replace"))
            texts.append(str(path))
    return "\n".join(texts)


@pytest.mark.slow
def test_secrets_from_the_environment_never_reach_records_logs_reports_or_output(tmp_path, monkeypatch, capsys, caplog):
    from greencallbacks.carbon.live import ElectricityMapsSource, WattTimeSource

    for variable in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("ELECTRICITYMAPS_TOKEN", SECRET)
    monkeypatch.setenv("WATTTIME_USERNAME", "user-" + SECRET)
    monkeypatch.setenv("WATTTIME_PASSWORD", SECRET)
    api = _LeakyApi()
    texts = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            electricity_maps = ElectricityMapsSource("DE", base_url=api.url + "/v3")
            watttime = WattTimeSource("CAISO_NORTH", base_url=api.url, fallback_zone="US-CA")
            for name, source in (("em", electricity_maps), ("wt", watttime)):
                tracker = scripted_run(tmp_path / name, Carbon(series=source))
                assert source.requests_made >= 1  # it really asked, and failed
                assert all("fallback" in r.intensity_source for r in tracker.records)
                texts += [repr(source), repr(tracker.carbon.describe()), *(r.intensity_source for r in tracker.records)]
            # An adapter run with a live source, its checkpoint and its loggers.
            L, EnergyCallback, TinyModel, loaders, trainer_kwargs = _lightning()
            callback = EnergyCallback(series=electricity_maps, output_dir=tmp_path / "lightning")
            checkpoint = L.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)
            trainer = L.Trainer(
                max_epochs=1, logger=L.loggers.CSVLogger(tmp_path, name="csv"), callbacks=[callback, checkpoint],
                **trainer_kwargs(enable_checkpointing=True),
            )
            trainer.fit(TinyModel(), *loaders())
            for argv in (["report", str(tmp_path / "em"), str(tmp_path / "wt"), str(tmp_path / "lightning")],
                         ["report", str(tmp_path / "em"), "--format", "json"],
                         ["report", str(tmp_path / "wt"), "--format", "latex"],
                         ["lifecycle", str(tmp_path / "em"), "--inferences", "10"]):
                assert cli.main(argv) == 0
        texts += [str(w.message) for w in caught]
    finally:
        api.close()
    captured = capsys.readouterr()
    texts += [captured.out, captured.err, caplog.text, _every_text(tmp_path)]
    everything = "\n".join(texts)
    assert "fallback" in everything  # the failure is reported...
    assert SECRET not in everything  # ...without the secret


# --------------------------------------------------------------------- files and places
@pytest.mark.slow
def test_files_are_written_only_under_the_output_directory(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    before_package = tree(PACKAGE_DIR)
    before = tree(tmp_path)

    scripted_run(tmp_path / "tracker-out")
    L, EnergyCallback, TinyModel, loaders, trainer_kwargs = _lightning()
    callback = EnergyCallback(intensity=100, output_dir=tmp_path / "lightning-out")
    trainer = L.Trainer(max_epochs=2, logger=False, default_root_dir=tmp_path / "framework", callbacks=[callback],
                        **trainer_kwargs())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(TinyModel(), *loaders())

    new = set(tree(tmp_path)) - set(before)
    ours = {p for p in new if p.startswith(("tracker-out/", "lightning-out/"))}
    framework = {p for p in new if p.startswith("framework/")}
    assert new == ours | framework, sorted(new - ours - framework)
    assert {Path(p).name for p in ours} == {"energy-records.jsonl", "energy-summary.json"}
    assert not any(Path(p).suffix == ".tmp" for p in new)  # atomic summary writes leave no temporary
    assert tree(PACKAGE_DIR) == before_package  # nothing written into the installed package
    assert not any(work.iterdir()) and not any(home.iterdir())


def test_no_lock_files_anywhere_we_write(tmp_path):
    scripted_run(tmp_path / "a")
    scripted_run(tmp_path / "a")  # a second run appending to the same records
    names = [p.name.lower() for p in tmp_path.rglob("*")] + [p.name.lower() for p in PACKAGE_DIR.rglob("*")]
    assert not [n for n in names if n.endswith((".lock", ".lck", ".pid")) or n.startswith(".~lock")]
    assert len(read_records(tmp_path / "a")) == 6


@pytest.mark.slow
def test_no_signal_handler_is_replaced(tmp_path):
    signals = sorted(signal.valid_signals(), key=int)

    def handlers():
        out = {}
        for number in signals:
            try:
                out[int(number)] = signal.getsignal(number)
            except (OSError, ValueError):
                pass
        return out

    before = handlers()
    scripted_run(tmp_path / "tracker")
    from greencallbacks.session import EnergySession

    session = EnergySession(intensity=100)
    session.start(output_dir=tmp_path / "session")
    session.tracker.begin("train", 0)
    session.tracker.end("train")
    session.stop()
    assert handlers() == before

    L, EnergyCallback, TinyModel, loaders, trainer_kwargs = _lightning()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        baseline = L.Trainer(max_epochs=1, logger=False, default_root_dir=tmp_path / "plain", **trainer_kwargs())
        baseline.fit(TinyModel(), *loaders())
        after_plain = handlers()
        trainer = L.Trainer(max_epochs=1, logger=False, default_root_dir=tmp_path / "ours",
                            callbacks=[EnergyCallback(intensity=100)], **trainer_kwargs())
        trainer.fit(TinyModel(), *loaders())
    # Whatever Lightning itself leaves behind, the callback adds nothing to it.
    assert handlers() == after_plain


def test_import_opens_no_socket_starts_no_thread_and_sets_no_handler():
    code = (
        "import signal, socket, threading\n"
        "def refuse(*a, **k): raise SystemExit('network at import')\n"
        "socket.socket.connect = refuse; socket.create_connection = refuse\n"
        "before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}\n"
        "threads = threading.active_count()\n"
        "import greencallbacks, greencallbacks.carbon, greencallbacks.carbon.live, greencallbacks.session\n"
        "import greencallbacks.tracker, greencallbacks.report, greencallbacks.cli\n"
        "assert threading.active_count() == threads, threading.enumerate()\n"
        "assert before == {s: signal.getsignal(s) for s in before}\n"
        "print('ok')\n"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
