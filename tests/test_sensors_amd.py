"""AMD GPU sensors against the fake amdsmi: accumulator, wrap, sampled fallback, device mapping,
two-die boards, errors, and the fake's names against the real binding's source."""

import ast
import importlib.util
import inspect
import pathlib
import subprocess
import sys
import warnings

import pytest

from greencallbacks.meter import EnergyWarning, Meter
from greencallbacks.sensors import amd as amd_module
from greencallbacks.sensors.amd import AVERAGED_POWER_NOTE, ORDER_GUESSED, AmdGpuSensor, find_amd_gpus
from greencallbacks.sensors.base import Kind, Method, SensorError
from tests.fakes import fake_amdsmi as fa
from tests.fakes.fake_amdsmi import FakeAmdSmi
from tests.fakes.scripted import FakeClock, read_while_polling


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    # The share of a board is said once per process; each test is a process of its own here.
    monkeypatch.setattr(amd_module, "_warned_shares", set())


@pytest.fixture
def clock():
    return FakeClock(start=500.0)


@pytest.fixture
def smi(clock):
    return FakeAmdSmi(clock)


def find(smi, indices=None, **environ):
    return find_amd_gpus(indices, environ=environ, amdsmi=smi, clock=smi.clock)


def scopes(found):
    return [(s.name, s.scope) for s in found.sensors]


def run_for(clock, seconds, step, sensor=None):
    for _ in range(round(seconds / step)):
        clock.advance(step)
        if sensor is not None:
            sensor.poll()


# -- energy accumulator ---------------------------------------------------------------------


def test_accumulator_counts_resolution_microjoules(smi, clock):
    board = smi.add_board(power_w=600.0)
    [sensor] = find(smi).sensors
    assert (sensor.method, sensor.kind, sensor.name) == (Method.COUNTER, Kind.GPU, "gpu0")
    assert sensor.scope == board.dies[0].uuid and sensor.model == "AMD Instinct MI300X"
    assert sensor.poll_interval_s == 1.0  # no wrap to catch: read each second so a board lost mid-epoch loses at most that
    start = sensor.energy_j()
    clock.advance(12.5)
    assert sensor.energy_j() - start == pytest.approx(600.0 * 12.5, abs=fa.RESOLUTION_UJ * 1e-6)


@pytest.mark.parametrize("bits", [64, 32])
def test_an_accumulator_read_stepping_back_is_a_misread_not_a_restart_or_a_wrap(smi, clock, bits):
    """One read 14e6 counts (214 J) low billed a 64-bit accumulator's whole value (1.05 MJ) as a
    driver restart; one 30e6 low (459 J, below the 32-bit accumulator's 0 here), a whole wrap
    (65.6 kJ), in half a second at 300 W. Skipped now, with one warning, and the next reads count
    on from the last good one; a real wrap still counts. (A read back to a value that a restart
    could give is counted as a restart: nothing tells them apart.)"""
    board = smi.add_board(power_w=300.0, counter_bits=bits)
    [sensor] = find(smi).sensors
    start = sensor.energy_j()
    with pytest.warns(UserWarning, match="misread"):
        for step in range(4):
            if step == 1:
                board.misread(-14_000_000 if bits == 64 else -30_000_000)
            clock.advance(0.5)
            sensor.energy_j()
    assert sensor.energy_j() - start == pytest.approx(4 * 0.5 * 300.0, abs=1e-3)
    if bits == 32:  # a wrap: 94 s of 700 W fill 2**32 counts; one at 300 W over 100 s of polls
        for _ in range(200):
            clock.advance(sensor.poll_interval_s / 2)
            sensor.poll()
        assert sensor.energy_j() - start == pytest.approx(2 * 300.0 + 100 * sensor.poll_interval_s * 300.0, rel=1e-6)


def test_a_wide_accumulator_first_read_below_2_32_restarts_past_it_without_losing_energy(smi, clock):
    """A 64-bit accumulator read first within a minute of a driver load (below 2**32 counts) was
    taken for a 32-bit one for the whole run: past 2**32, a driver reload read as a wrap of negative
    gain, and the 100 s after it recorded 0 J of 75 kJ. A read past 2**32 proves it wide."""
    board = smi.add_board(power_w=750.0)
    board._origin_counts = 1_000  # just after the driver loaded
    [sensor] = find(smi).sensors
    start = sensor.energy_j()
    for _ in range(120):  # 120 s at 750 W: 90 kJ, past 2**32 counts (65.7 kJ)
        clock.advance(1.0)
        sensor.poll()
    assert sensor.poll_interval_s == 1.0
    board._origin_t, board._origin_counts = clock(), 0  # the driver reloads: the count starts at 0
    for _ in range(100):
        clock.advance(1.0)
        sensor.poll()
    assert sensor.energy_j() - start == pytest.approx(750.0 * 220, rel=1e-6)


@pytest.mark.parametrize("version, keys", [("6.1.2", {"power"}), ("6.2.4", {"power"}),
                                           ("6.3.3", {"power", "energy_accumulator"}), ("6.4.0", {"energy_accumulator"})])
def test_bindings_before_6_3_name_the_accumulator_power(clock, version, keys):
    smi = FakeAmdSmi(clock, version=version)
    smi.add_board(power_w=200.0)
    [sensor] = find(smi).sensors
    clock.advance(3.0)
    assert sensor.energy_j() == pytest.approx(600.0, abs=1e-3)
    assert set(smi.amdsmi_get_energy_count(smi.dies[0].handle)) - {"counter_resolution", "timestamp"} == keys


@pytest.mark.parametrize("counter_supported", [True, False])
def test_amdsmi_6_1_0s_0xffff_is_no_power_reading(clock, counter_supported):
    """amdsmi 6.1.0 (within the declared floor, amdsmi>=6.1) hands over the library's 0xFFFF where a
    power field has no value; 6.1.1 made it "N/A". Taken as watts, an MI250X (no current_socket_power
    on MI200) read 65,535 W: sampled at that without its accumulator (a VM guest: 131 kJ in 2 s of a
    400 W board), the power its frozen-accumulator check and its sampled fallback read otherwise; and
    its second die, whose average is 0 W, was billed as a board of its own."""
    smi = FakeAmdSmi(clock, version="6.1.0")
    board = smi.mi250x(power_w=400.0)
    board.counter_supported = counter_supported
    smi.amdsmi_init()
    assert smi.amdsmi_get_power_info(board.dies[0].handle)["current_socket_power"] == 0xFFFF
    smi.amdsmi_shut_down()
    [sensor] = find(smi).sensors
    assert sensor.method == (Method.COUNTER if counter_supported else Method.SAMPLED)
    clock.advance(1.0)
    assert sensor.power_w() == pytest.approx(400.0, abs=1.0)
    start = sensor.energy_j()
    run_for(clock, 2.0, 0.05, sensor)
    assert sensor.energy_j() - start == pytest.approx(800.0, rel=0.01)


def test_a_32_bit_accumulator_is_polled_often_enough_that_no_wrap_passes_unseen(smi, clock):
    board = smi.add_board(power_w=700.0, counter_bits=32)
    [sensor] = find(smi).sensors
    wrap_j = 2**32 * fa.RESOLUTION_UJ / 1e6  # 65.7 kJ: 94 s at 700 W
    assert sensor.poll_interval_s <= wrap_j / board.power_limit_w / 2
    start = sensor.energy_j()
    run_for(clock, 400.0, sensor.poll_interval_s, sensor)  # four wraps
    assert sensor.energy_j() - start == pytest.approx(700.0 * 400.0, rel=1e-6)


def test_without_polls_a_32_bit_accumulator_loses_whole_wraps(smi, clock):
    # Why the background thread reads it: two boundary reads 200 s apart at 700 W (2.1 wraps)
    # see only the remainder.
    smi.add_board(power_w=700.0, counter_bits=32)
    [sensor] = find(smi).sensors
    start = sensor.energy_j()
    clock.advance(200.0)
    lost = 700.0 * 200.0 - (sensor.energy_j() - start)
    assert lost == pytest.approx(2 * 2**32 * fa.RESOLUTION_UJ / 1e6, rel=1e-6)


def test_an_accumulator_still_below_32_bits_is_polled_as_if_it_could_wrap(smi):
    # A wide accumulator soon after the driver loaded looks like a 32-bit one: polling costs a
    # read every few seconds, missing a wrap would cost 65.7 kJ.
    board = smi.add_board()
    board._origin_counts = 1234
    [sensor] = find(smi).sensors
    assert sensor.poll_interval_s is not None and sensor.poll_interval_s <= amd_module.WRAP_POLL_MAX_S


def test_a_wide_accumulator_going_back_is_a_driver_reload(smi, clock):
    board = smi.add_board(power_w=100.0)  # a 64-bit accumulator past 32 bits
    [sensor] = find(smi).sensors
    clock.advance(1.0)
    before = sensor.energy_j()
    board._origin_t, board._origin_counts = clock(), 0  # reload: restarts from 0
    clock.advance(2.0)
    assert sensor.energy_j() - before == pytest.approx(200.0, abs=1e-3)


# -- socket power, sampled --------------------------------------------------------------------


def test_unsupported_accumulator_integrates_instantaneous_socket_power(smi, clock):
    board = smi.add_board(power_w=300.0)
    board.counter_supported = False
    t0 = clock()
    board.set_power(lambda t: 300.0 + 100.0 * (t - t0))  # a ramp: the trapezoid rule is exact
    [sensor] = find(smi).sensors
    assert sensor.method == Method.SAMPLED and sensor.note == ""
    assert sensor.source == "integrated amdsmi power samples"  # the paper's words (report.method_sentence)
    start = sensor.energy_j()
    run_for(clock, 2.0, sensor.poll_interval_s, sensor)
    assert sensor.energy_j() - start == pytest.approx(300.0 * 2 + 50.0 * 2**2, rel=1e-6)


def test_a_meter_integrates_socket_power_on_its_background_thread(smi, clock):
    board = smi.add_board(power_w=250.0)
    board.counter_supported = False
    meter = Meter(find(smi).sensors, clock=clock)
    try:
        start = meter.snapshot()
        assert meter.sampling  # the sampled sensor started the one background thread
        clock.advance(4.0)
        [component] = meter.between(start, meter.snapshot()).components
    finally:
        meter.close()
    assert component.method == "sampled"
    assert component.energy_j == pytest.approx(1000.0, rel=1e-6)


def test_where_only_averaged_power_exists_it_is_used_and_labelled(smi):
    board = smi.mi250x()
    board.counter_supported = False
    [sensor] = find(smi).sensors
    assert sensor.method == Method.SAMPLED
    assert AVERAGED_POWER_NOTE in sensor.note and sensor.update_period_s == 1.0


def test_a_gpu_reporting_only_amdsmi_7s_socket_power_is_measured_not_taken_for_a_second_die(smi, monkeypatch):
    """A VM guest without the accumulator whose power info has only ``socket_power`` valid: one die
    of its own, sampled, not the second die of the board before it."""
    smi.add_board(power_w=300.0)
    board = smi.add_board(power_w=200.0)
    for b in smi.boards:
        b.counter_supported = False
    real = smi.amdsmi_get_power_info

    def socket_power_only(processor_handle):
        info = real(processor_handle)
        return {**info, "current_socket_power": "N/A", "average_socket_power": "N/A"}

    monkeypatch.setattr(smi, "amdsmi_get_power_info", socket_power_only)
    sensors = find(smi).sensors
    assert [s.method for s in sensors] == [Method.SAMPLED, Method.SAMPLED]
    assert sensors[1].power_w() == pytest.approx(board.power_at(smi.clock()), abs=1.0)


def test_gpu_with_neither_count_nor_power_is_unavailable_and_balances_init(smi, monkeypatch):
    board = smi.add_board()
    board.counter_supported = False
    monkeypatch.setattr(smi, "amdsmi_get_power_info", lambda processor_handle: {"current_socket_power": "N/A"})
    found = find(smi)
    assert found.sensors == []
    [missing] = found.unavailable
    assert missing.name == "gpu0" and "neither an energy count nor socket power" in missing.reason
    assert smi.init_count == 0


def test_error_mid_run_raises_sensor_error_on_one_line(smi, clock):
    board = smi.add_board()
    [sensor] = find(smi).sensors
    board.error_code = fa.AMDSMI_STATUS_UNKNOWN_ERROR
    with pytest.raises(SensorError, match=r"energy count failed: Error code: 4294967295 \| AMDSMI_STATUS_UNKNOWN") as raised:
        sensor.energy_j()
    assert "\n" not in str(raised.value)
    assert isinstance(raised.value.__cause__, fa.AmdSmiLibraryException)


def test_a_failing_gpu_degrades_in_the_meter_and_training_goes_on(smi, clock):
    board = smi.add_board(power_w=100.0)
    meter = Meter(find(smi).sensors, clock=clock)
    try:
        start = meter.snapshot()
        clock.advance(1.0)
        board.error_code = fa.AMDSMI_STATUS_NOT_FOUND
        with pytest.warns(EnergyWarning, match="no longer counted"):
            end = meter.snapshot()
        [component] = meter.between(start, end).components
    finally:
        meter.close()
    assert "stopped counting" in component.note


def test_each_sensor_balances_its_init(smi):
    smi.add_board()
    smi.add_board()
    found = find(smi)
    assert smi.init_count == 2
    for sensor in found.sensors:
        sensor.close()
        sensor.close()
    assert smi.init_count == 0


# -- which GPUs: HIP order and the visibility variables ----------------------------------------


@pytest.fixture
def four(smi):
    for power in (100.0, 101.0, 102.0, 103.0):
        smi.add_board(power_w=power)
    return smi


def uuid(smi, smi_index):
    return smi.dies[smi_index].uuid


def test_hip_order_comes_from_hip_id_not_from_amd_smi_order(four):
    four.set_hip_order([2, 0, 3, 1])
    found = find(four)
    assert scopes(found) == [(f"gpu{h}", uuid(four, s)) for h, s in enumerate([2, 0, 3, 1])]


def test_without_enumeration_info_hip_order_comes_from_kfd_nodes(clock):
    smi = FakeAmdSmi(clock, version="6.3.1")
    for _ in range(3):
        smi.add_board()
    smi.set_hip_order([1, 2, 0])
    assert not hasattr(smi, "amdsmi_get_gpu_enumeration_info")
    assert [s.scope for s in find(smi).sensors] == [uuid(smi, 1), uuid(smi, 2), uuid(smi, 0)]


@pytest.mark.parametrize("picked, guessed", [
    ({"HIP_VISIBLE_DEVICES": "2"}, True),      # by position, in an order this amdsmi cannot give
    ({"device_indices": [1]}, True),           # this process's device among several
    ({}, False),                               # every GPU: the order changes nothing billed
    ({"ROCR_VISIBLE_DEVICES": "uuid:1"}, False),  # named by its id
])
def test_an_order_amdsmi_before_6_3_cannot_give_is_said_once_and_noted_where_it_picks_the_gpu(clock, monkeypatch, picked, guessed):
    """amdsmi 6.1 and 6.2 give neither HIP's ids nor KFD node ids: HIP's order need not be amd-smi's,
    so a GPU picked by position may be another. It was assumed in silence."""
    monkeypatch.setattr(amd_module, "_warned_order", set())
    smi = FakeAmdSmi(clock, version="6.1.0")
    for _ in range(3):
        smi.add_board()
    assert not hasattr(smi, "amdsmi_get_gpu_kfd_info")
    environ = {k: (uuid(smi, 1) if v == "uuid:1" else v) for k, v in picked.items() if k != "device_indices"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sensors = find_amd_gpus(picked.get("device_indices"), environ=environ, amdsmi=smi, clock=clock).sensors
        find_amd_gpus(picked.get("device_indices"), environ=environ, amdsmi=smi, clock=clock)
    said = [str(w.message) for w in caught if "device order" in str(w.message)]
    assert len(said) == (1 if guessed else 0), said
    assert all((ORDER_GUESSED in s.note) == guessed for s in sensors) and sensors
    for sensor in sensors:
        sensor.close()


def test_hip_visible_devices_picks_and_renumbers(four):
    found = find(four, HIP_VISIBLE_DEVICES="3,1")
    assert scopes(found) == [("gpu0", uuid(four, 3)), ("gpu1", uuid(four, 1))]
    [sensor] = find(four, [1], HIP_VISIBLE_DEVICES="3,1").sensors
    assert (sensor.name, sensor.scope) == ("gpu1", uuid(four, 1))


def test_cuda_visible_devices_counts_when_hip_visible_devices_is_unset(four):
    assert [s.scope for s in find(four, CUDA_VISIBLE_DEVICES="2").sensors] == [uuid(four, 2)]
    # HIP's own variable wins where both are set.
    assert [s.scope for s in find(four, CUDA_VISIBLE_DEVICES="2", HIP_VISIBLE_DEVICES="0").sensors] == [uuid(four, 0)]


def test_rocr_visible_devices_applies_first_and_hip_counts_within_it(four):
    found = find(four, ROCR_VISIBLE_DEVICES="1,2,3", HIP_VISIBLE_DEVICES="2,0")
    assert [s.scope for s in found.sensors] == [uuid(four, 3), uuid(four, 1)]


def test_rocr_uuids_and_their_prefixes_name_gpus(four):
    rocr = four.dies[2].rocr_uuid
    assert [s.scope for s in find(four, ROCR_VISIBLE_DEVICES=rocr.upper()).sensors] == [uuid(four, 2)]
    assert [s.scope for s in find(four, ROCR_VISIBLE_DEVICES=rocr[:-1]).sensors] == [uuid(four, 2)]
    assert [s.scope for s in find(four, HIP_VISIBLE_DEVICES=uuid(four, 3)).sensors] == [uuid(four, 3)]


def test_an_invalid_entry_ends_the_list_and_says_why(four):
    found = find(four, HIP_VISIBLE_DEVICES="1,9,0")
    assert [s.scope for s in found.sensors] == [uuid(four, 1)]
    [invalid] = found.unavailable
    assert "HIP_VISIBLE_DEVICES entry '9'" in invalid.reason and invalid.fix


@pytest.mark.parametrize("variable", ["ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"])
@pytest.mark.parametrize("value", ["", "-1"])
def test_an_empty_list_hides_every_gpu_without_touching_amdsmi(four, variable, value):
    found = find(four, **{variable: value})
    assert found.sensors == [] and "hides every GPU" in found.unavailable[0].reason
    assert four.calls["amdsmi_init"] == 0


def test_requested_index_beyond_the_visible_gpus_is_unavailable(four):
    found = find(four, [0, 5], HIP_VISIBLE_DEVICES="0,1")
    assert [s.name for s in found.sensors] == ["gpu0"]
    assert [u.name for u in found.unavailable] == ["gpu5"]


# -- two dies per board (MI250X) ------------------------------------------------------------


def test_both_dies_of_a_board_are_one_sensor_billing_the_board_once(smi, clock):
    smi.mi250x(power_w=500.0)
    found = find(smi)
    [sensor] = found.sensors
    assert (sensor.name, sensor.method, sensor.scope) == ("gpu0", Method.COUNTER, smi.dies[0].uuid)
    assert "gpu0, gpu1" in sensor.note
    start = sensor.energy_j()
    clock.advance(10.0)
    assert sensor.energy_j() - start == pytest.approx(5000.0, abs=1e-3)  # the board, once


def test_one_die_of_a_board_is_billed_half_of_it_apportioned(smi, clock):
    smi.mi250x(power_w=500.0)
    smi.mi250x(power_w=300.0)
    # Two processes, one per die of the second board: each bills half; together the board once.
    with pytest.warns(EnergyWarning, match="one die of a multi-die AMD board"):
        [first] = find(smi, HIP_VISIBLE_DEVICES="2").sensors
    [second] = find(smi, HIP_VISIBLE_DEVICES="3").sensors
    for sensor in (first, second):
        assert sensor.method == Method.APPORTIONED and sensor.share == 0.5
        assert sensor.scope == smi.dies[2].uuid  # the second board's first die reports its energy
        assert sensor.relative_uncertainty == pytest.approx(1.0)
        assert "1 of the board's 2 dies" in sensor.note
    starts = (first.energy_j(), second.energy_j())
    clock.advance(10.0)
    billed = (first.energy_j() - starts[0]) + (second.energy_j() - starts[1])
    assert billed == pytest.approx(3000.0, abs=1e-3)


def test_a_secondary_die_alone_is_measured_through_its_first_die(smi, clock):
    smi.add_board()  # a single-die GPU before the board, so "the die before" is not index 0
    smi.mi250x(power_w=400.0)
    [sensor] = find(smi, HIP_VISIBLE_DEVICES="2").sensors
    assert sensor.scope == smi.dies[1].uuid and sensor.share == 0.5
    clock.advance(1.0)
    assert sensor.energy_j() > 0


def test_meter_records_the_apportioned_die_with_its_bound(smi, clock):
    smi.mi250x(power_w=400.0)
    meter = Meter(find(smi, HIP_VISIBLE_DEVICES="0").sensors, clock=clock)
    try:
        start = meter.snapshot()
        clock.advance(5.0)
        [component] = meter.between(start, meter.snapshot()).components
    finally:
        meter.close()
    assert component.method == "apportioned"
    assert component.energy_j == pytest.approx(1000.0, abs=1e-3)
    assert component.uncertainty_j >= 1000.0  # +/-100 %: the die's true part lies in [0, 2000] J
    # Into the records with what was read: "GPU energy apportioned from a shared device's amdsmi energy counters".
    assert component.to_dict()["source"] == "amdsmi energy counters"


# -- amdsmi unusable: the reason and the fix ----------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason", "fix"),
    [
        (fa.AMDSMI_STATUS_NO_PERM, "no permission", "'render' and 'video' groups"),
        (fa.AMDSMI_STATUS_DRIVER_NOT_LOADED, "amdgpu driver is not loaded", "amdgpu kernel module"),
        (fa.AMDSMI_STATUS_INIT_ERROR, "no usable AMD GPU or driver", "/dev/kfd"),
    ],
)
def test_init_failures_are_unavailable_with_the_reason_and_the_fix(smi, code, reason, fix):
    smi.init_error = code
    [missing] = find(smi).unavailable
    assert missing.kind == Kind.GPU and reason in missing.reason and fix in missing.fix
    assert "\n" not in missing.reason


def test_no_gpu_is_unavailable_with_a_fix(smi):
    [missing] = find(smi).unavailable
    assert "found no AMD GPU" in missing.reason and "amd-smi list" in missing.fix
    assert smi.init_count == 0


def test_missing_binding_is_unavailable_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "amdsmi", None)  # makes `import amdsmi` raise ImportError
    [missing] = find_amd_gpus(environ={}).unavailable
    assert "not installed" in missing.reason and "greencallbacks[amd]" in missing.fix


def test_binding_without_its_library_says_so_and_prints_nothing(tmp_path, monkeypatch, capsys):
    # What the real binding does without libamd_smi.so: prints, then fails with KeyError.
    package = tmp_path / "amdsmi"
    package.mkdir()
    (package / "__init__.py").write_text(
        "print('libamd_smi.so: cannot open shared object file')\n"
        "print('Unable to find libamd_smi.so library try installing amd-smi-lib from your package manager')\n"
        "_libraries = {}\n_libraries['libamd_smi.so'].amdsmi_init\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "amdsmi", raising=False)
    [missing] = find_amd_gpus(environ={}).unavailable
    assert "libamd_smi.so could not be loaded" in missing.reason and "Unable to find" in missing.reason
    assert "amd-smi-lib" in missing.fix
    assert capsys.readouterr().out == ""


def test_a_handle_that_is_not_one_is_refused_like_the_binding(smi):
    smi.add_board()
    smi.amdsmi_init()
    with pytest.raises(fa.AmdSmiParameterException):
        smi.amdsmi_get_energy_count(object())
    with pytest.raises(SensorError, match="could not identify"):
        AmdGpuSensor(object(), index=0, amdsmi=smi)


def test_import_greencallbacks_imports_no_amdsmi():
    code = "import sys, greencallbacks, greencallbacks.sensors; print('amdsmi' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- the fake against the real binding ------------------------------------------------------------


def _installed_amdsmi_source() -> pathlib.Path:
    # The binding cannot be imported without ROCm's library, so its source is read, not run: the
    # installed one, or the copy scripts/setup.sh puts beside the environment.
    spec = importlib.util.find_spec("amdsmi")
    if spec is not None and spec.origin is not None:
        return pathlib.Path(spec.origin).parent
    reference = pathlib.Path(sys.prefix) / "reference" / "amdsmi" / "amdsmi"
    if (reference / "amdsmi_interface.py").is_file():
        return reference
    pytest.skip("amdsmi is not installed (scripts/setup.sh installs its source): nothing to compare the fake with")


def _functions(tree: ast.Module) -> dict[str, list[tuple[str, str | None]]]:
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            args = node.args.args
            defaults = [None] * (len(args) - len(node.args.defaults)) + [ast.unparse(d) for d in node.args.defaults]
            out[node.name] = [(a.arg, d) for a, d in zip(args, defaults)]
    return out


def _installed_amdsmi_version(source: pathlib.Path) -> str:
    # Every release on PyPI (6.1.0 to 7.0.2) writes it in _version.py; a copy without one is taken as the newest.
    if not (source / "_version.py").is_file():
        return "7.0.2"
    tree = ast.parse((source / "_version.py").read_text())
    return next(node.value.value for node in tree.body
                if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__version__")


def _keys_built(tree: ast.Module, function: str) -> set[str]:
    """The string keys of the dictionaries ``function`` builds (what it returns)."""
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function)
    return {k.value for d in ast.walk(node) if isinstance(d, ast.Dict) for k in d.keys if isinstance(k, ast.Constant)}


def test_fake_calls_have_the_names_and_parameters_of_the_installed_amdsmi():
    """Against whichever release is installed (the declared floor is amdsmi>=6.1): the fake, set to
    that release, has the calls it exports, with its parameters and the keys of what it returns."""
    source = _installed_amdsmi_source()
    version = _installed_amdsmi_version(source)
    exported = {
        alias.asname or alias.name
        for node in ast.walk(ast.parse((source / "__init__.py").read_text()))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    interface = ast.parse((source / "amdsmi_interface.py").read_text())
    real = _functions(interface)
    fake = FakeAmdSmi(version=version)
    every_call = [name for name in dir(FakeAmdSmi) if name.startswith("amdsmi_")]
    assert "amdsmi_get_energy_count" in every_call and "amdsmi_get_power_info" in every_call
    for name in every_call:
        # The calls a release lacks (enumeration before 6.4, KFD info before 6.3): its fake lacks them too.
        assert hasattr(fake, name) == (name in exported), f"{name}: amdsmi {version} exports it: {name in exported}"
        if name not in exported:
            continue
        fake_parameters = [p.name for p in inspect.signature(getattr(fake, name)).parameters.values()]
        # Parameters a release added after the handle have defaults the sensor leaves alone
        # (amdsmi_get_power_info's sensor_ind=0 in 6.4.x).
        assert [n for n, _ in real[name]][: len(fake_parameters)] == fake_parameters, name
        assert all(d is not None for _, d in real[name][len(fake_parameters):]), name
    assert {"AmdSmiException", "AmdSmiLibraryException", "AmdSmiParameterException", "AmdSmiInitFlags"} <= exported
    # The dictionaries the sensor reads: the keys this release builds, and the fake of this release returns.
    fake.add_board()
    fake.amdsmi_init()
    handle = fake.dies[0].handle
    for name in ("amdsmi_get_energy_count", "amdsmi_get_power_info", "amdsmi_get_gpu_kfd_info",
                 "amdsmi_get_gpu_enumeration_info"):
        if name in exported:
            assert set(getattr(fake, name)(handle)) == _keys_built(interface, name), (version, name)
    assert {"market_name", "asic_serial"} <= _keys_built(interface, "amdsmi_get_gpu_asic_info")


def test_fake_status_codes_and_exceptions_match_the_installed_amdsmi():
    source = _installed_amdsmi_source()
    wrapper = ast.parse((source / "amdsmi_wrapper.py").read_text())
    real_codes = {
        node.targets[0].id: node.value.value
        for node in wrapper.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) and isinstance(node.value, ast.Constant)
        and node.targets[0].id.startswith(("AMDSMI_STATUS_", "AMDSMI_INIT_"))
    }
    for name in dir(fa):
        if name.startswith("AMDSMI_STATUS_"):
            assert getattr(fa, name) == real_codes[name], name
    for flag in fa.AmdSmiInitFlags:
        assert flag.value == real_codes[f"AMDSMI_{flag.name}"], flag
    # The sensor's own copies of the codes it branches on.
    for name in ("INVAL", "NOT_SUPPORTED", "NOT_YET_IMPLEMENTED", "FAIL_LOAD_MODULE", "NO_PERM", "INIT_ERROR", "NOT_FOUND", "DRIVER_NOT_LOADED", "NO_DATA",
                 "TIMEOUT", "RETRY", "INTERRUPT", "BUSY"):
        assert getattr(amd_module, f"STATUS_{name}") == real_codes[f"AMDSMI_STATUS_{name}"], name
    # The sensor calls amdsmi_init() with the binding's default flag, which must be AMD GPUs.
    interface_source = (source / "amdsmi_interface.py").read_text()
    init = next(node for node in ast.parse(interface_source).body
                if isinstance(node, ast.FunctionDef) and node.name == "amdsmi_init")
    assert [ast.unparse(d) for d in init.args.defaults] in (["AmdSmiInitFlags.INIT_AMD_GPUS"], ["AmdSmiInitFlags.AMD_GPUS"])
    assert "isinstance(flag, AmdSmiInitFlags)" in interface_source  # what the fake checks too
    exceptions = {node.name: node for node in ast.parse((source / "amdsmi_exception.py").read_text()).body if isinstance(node, ast.ClassDef)}
    for name in ("AmdSmiException", "AmdSmiLibraryException", "AmdSmiParameterException", "AmdSmiRetryException",
                 "AmdSmiTimeoutException"):
        real_class, fake_class = exceptions[name], getattr(fa, name)
        assert [ast.unparse(b) for b in real_class.bases] == [b.__name__ for b in fake_class.__bases__], name
        real_methods = {f.name: f.args for f in real_class.body if isinstance(f, ast.FunctionDef)}
        for method, args in real_methods.items():
            if method in ("set_err_msg",):
                continue
            # The parameters without a default (get_error_info's detailed=True came with amdsmi 7).
            required = [a.arg for a in args.args][: len(args.args) - len(args.defaults)]
            fake_parameters = inspect.signature(getattr(fake_class, method)).parameters.values()
            assert [p.name for p in fake_parameters if p.default is p.empty] == required, (name, method)
    error = fa.AmdSmiLibraryException(fa.AMDSMI_STATUS_NO_PERM)
    assert error.get_error_code() == 10 and str(error) == "Error code:\n\t10 | AMDSMI_STATUS_NO_PERM - Permission Denied"


def test_an_answer_without_the_documented_fields_is_unavailable_not_a_crash(smi, monkeypatch):
    smi.add_board()
    monkeypatch.setattr(smi, "amdsmi_get_energy_count", lambda processor_handle: {"energy": 1})
    monkeypatch.setattr(smi, "amdsmi_get_power_info", lambda processor_handle: {})
    found = find(smi)
    assert found.sensors == []
    [missing] = found.unavailable
    assert missing.name == "gpu0" and "answered {'energy': 1}, not the documented fields" in missing.reason


def test_an_unexpected_error_from_the_binding_is_unavailable_not_a_crash(smi, monkeypatch):
    smi.add_board()

    def broken():
        raise TypeError("amdsmi_get_processor_handles() changed")

    monkeypatch.setattr(smi, "amdsmi_get_processor_handles", broken)
    [missing] = find(smi).unavailable
    assert "could not list the GPUs: amdsmi_get_processor_handles() changed" in missing.reason
    assert smi.init_count == 0


def test_an_apportioned_die_reaches_the_records_and_the_report(smi, clock, tmp_path):
    from greencallbacks import report
    from greencallbacks.carbon import Carbon
    from greencallbacks.records import read_records
    from greencallbacks.tracker import Tracker

    smi.mi250x(power_w=400.0)
    [sensor] = find(smi, HIP_VISIBLE_DEVICES="1").sensors
    meter = Meter([sensor], fallback=None, clock=clock, wall_clock=lambda: clock() + 1.7e9)
    tracker = Tracker(carbon=Carbon(intensity=400.0, pue=1.0), output_dir=tmp_path)
    tracker.start(meter)
    start = clock()
    for epoch in range(2):
        tracker.begin("train", epoch)
        clock.advance(30.0)
        tracker.add_samples(64)
        tracker.end("train")
    tracker.finish()
    records = read_records(tmp_path)
    components = [c for r in records for c in r.components]
    assert {c["method"] for c in components} == {"apportioned"}
    # Half the board's 400 W for the whole run, billed once across the records.
    assert sum(c["energy_j"] for c in components) == pytest.approx(200.0 * (clock() - start), rel=1e-6)
    assert all(r.uncertainty_kwh > 0 for r in records if r.it_energy_kwh > 0)
    text = report.render_markdown(records)
    assert "Apportioned, not measured alone: gpu0" in text
    assert "Every component was measured" not in text


def test_energy_never_decreases_while_the_background_thread_polls_a_wrapping_accumulator(smi, clock):
    smi.add_board(power_w=700.0, counter_bits=32)
    [sensor] = find(smi).sensors
    readings = read_while_polling(sensor, clock, steps=3000, step_s=0.1)  # 300 s at 700 W: three wraps
    assert all(b >= a for a, b in zip(readings, readings[1:]))
    assert readings[-1] - readings[0] == pytest.approx(700.0 * 299.9, rel=1e-6)


def test_an_implausible_power_limit_does_not_make_the_wrap_polling_spin(smi, monkeypatch):
    smi.add_board(counter_bits=32)
    real = smi.amdsmi_get_power_info

    def microwatts(processor_handle):
        return {**real(processor_handle), "power_limit": 750_000_000}  # not the documented watts

    monkeypatch.setattr(smi, "amdsmi_get_power_info", microwatts)
    [sensor] = find(smi).sensors
    assert amd_module.WRAP_POLL_MIN_S <= sensor.poll_interval_s <= amd_module.WRAP_POLL_MAX_S
