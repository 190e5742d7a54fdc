"""/proc/cpuinfo as Linux writes it on x86, for a bare-metal host or a virtual machine.

One block per logical CPU, threads of a core numbered after all first threads (as Linux lists
them); a VM's ``flags`` include ``hypervisor``, as on every cloud VM (this line is from a KVM guest
on an AMD EPYC host, less that flag for bare metal).
"""

from __future__ import annotations

from pathlib import Path

_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht syscall "
    "nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl xtopology nonstop_tsc cpuid extd_apicid "
    "tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt tsc_deadline_timer aes "
    "xsave avx f16c rdrand{hypervisor} lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw "
    "topoext ssbd ibrs ibpb stibp vmmcall fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid rdseed adx smap "
    "clflushopt clwb sha_ni xsaveopt xsavec xgetbv1 xsaves clzero xsaveerptr wbnoinvd arat umip pku ospke vaes "
    "vpclmulqdq rdpid fsrm"
)


def cpuinfo_text(model: str, *, sockets: int, cores: int, threads_per_core: int, vm: bool) -> str:
    """``cores`` per socket, each with ``threads_per_core`` logical CPUs."""
    vendor = "GenuineIntel" if "Intel" in model else "AuthenticAMD"
    flags = _FLAGS.format(hypervisor=" hypervisor" if vm else "")
    blocks = []
    for thread in range(threads_per_core):
        for socket in range(sockets):
            for core in range(cores):
                apicid = (socket * cores + core) * threads_per_core + thread
                blocks.append(
                    f"processor\t: {len(blocks)}\nvendor_id\t: {vendor}\ncpu family\t: 25\nmodel\t\t: 17\n"
                    f"model name\t: {model}\nstepping\t: 1\nmicrocode\t: 0xa101148\ncpu MHz\t\t: 2400.000\n"
                    f"cache size\t: 1024 KB\nphysical id\t: {socket}\nsiblings\t: {cores * threads_per_core}\n"
                    f"core id\t\t: {core}\ncpu cores\t: {cores}\napicid\t\t: {apicid}\ninitial apicid\t: {apicid}\n"
                    f"fpu\t\t: yes\nfpu_exception\t: yes\ncpuid level\t: 16\nwp\t\t: yes\nflags\t\t: {flags}\n"
                    "bugs\t\t: sysret_ss_attrs spectre_v1 spectre_v2 spec_store_bypass srso\nbogomips\t: 4800.00\n"
                    "TLB size\t: 3584 4K pages\nclflush size\t: 64\ncache_alignment\t: 64\n"
                    "address sizes\t: 52 bits physical, 57 bits virtual\npower management:\n"
                )
    return "\n".join(blocks) + "\n"


def write_cpuinfo(folder: Path, model: str, *, sockets: int = 1, cores: int, threads_per_core: int = 2,
                  vm: bool) -> str:
    """The text written to a new file in ``folder``; its path, as the estimate's ``cpuinfo_path``."""
    path = folder / f"cpuinfo-{len(list(folder.glob('cpuinfo-*')))}"
    path.write_text(cpuinfo_text(model, sockets=sockets, cores=cores, threads_per_core=threads_per_core, vm=vm))
    return str(path)
