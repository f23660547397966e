"""Jetson telemetry against recorded device data (tests/data/jetson/README.md says where each file came from).

No Jetson is reachable here: the readers take a root path, and each test builds a
fake ``/etc``, ``/proc`` and ``/sys`` under tmp_path from the recorded files.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from streamer.telemetry import jetson as tj

DATA = Path(__file__).parent / "data" / "jetson"
TEGRASTATS = DATA / "tegrastats"


def _lines(name: str) -> list[str]:
    return [line for line in (TEGRASTATS / name).read_text(encoding="utf-8").splitlines() if line.strip()]


def _write(root: Path, absolute: str, text: str | bytes) -> None:
    path = root / absolute.lstrip("/")
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")


def _tree_from_jetson_clocks(root: Path, show: str) -> None:
    """cpufreq policies and the GPU devfreq node holding the values a recorded ``jetson_clocks --show`` printed."""
    for m in re.finditer(r"^cpu(\d+):.*?MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)", show, re.MULTILINE):
        n, lo, hi, cur = m.groups()
        base = f"/sys/devices/system/cpu/cpufreq/policy{n}"
        _write(root, f"{base}/scaling_min_freq", lo + "\n")
        _write(root, f"{base}/scaling_max_freq", hi + "\n")
        _write(root, f"{base}/scaling_cur_freq", cur + "\n")
    gpu = re.search(r"^GPU MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)", show, re.MULTILINE)
    if gpu:
        lo, hi, cur = gpu.groups()
        base = "/sys/class/devfreq/57000000.gpu"
        _write(root, f"{base}/min_freq", lo + "\n")
        _write(root, f"{base}/max_freq", hi + "\n")
        _write(root, f"{base}/cur_freq", cur + "\n")


def _runner(outputs: dict[str, str | None]) -> Any:
    """A command runner answering from recorded command outputs (keyed by the command's last word)."""

    def run(cmd: list[str]) -> str | None:
        return outputs.get(cmd[-1] if cmd[0] == "dpkg-query" else cmd[0])

    return run


def _orin_nano_super_root(root: Path) -> None:
    """The Orin Nano Super JetPack 6.2 device: recorded release file and meminfo, plus sysfs values derived
    from its recorded busy ``sudo tegrastats`` line (GPU 99 % at 612 MHz, rails, temperatures)."""
    _write(root, "/etc/nv_tegra_release", (DATA / "orin_nano_super_jp62" / "nv_tegra_release").read_text(encoding="utf-8"))
    _write(root, "/proc/meminfo", (DATA / "misc" / "meminfo_tx2.txt").read_text(encoding="utf-8"))
    # derived from the busy tegrastats line, in sysfs units:
    _write(root, "/sys/devices/platform/gpu.0/load", "990\n")  # per mille
    gpu = "/sys/class/devfreq/17000000.gpu"
    _write(root, f"{gpu}/cur_freq", "612000000\n")
    _write(root, f"{gpu}/min_freq", "306000000\n")
    _write(root, f"{gpu}/max_freq", "1020000000\n")
    _write(root, f"{gpu}/available_frequencies", "306000000 408000000 510000000 612000000 714000000 816000000 918000000 1020000000\n")
    for i, (kind, milli) in enumerate(
        [("cpu-thermal", 57125), ("gpu-thermal", 58625), ("cv0-thermal", -256000), ("soc0-thermal", 56625), ("tj-thermal", 58312)]
    ):
        _write(root, f"/sys/class/thermal/thermal_zone{i}/type", kind + "\n")
        _write(root, f"/sys/class/thermal/thermal_zone{i}/temp", f"{milli}\n")
    hwmon = "/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1"
    for n, label, mv, ma in [(1, "VDD_IN", 5080, 3213), (2, "VDD_CPU_GPU_CV", 5072, 1401), (3, "VDD_SOC", 5064, 616), (4, "NC", 0, 0)]:
        _write(root, f"{hwmon}/in{n}_label", label + "\n")
        _write(root, f"{hwmon}/in{n}_input", f"{mv}\n")
        _write(root, f"{hwmon}/curr{n}_input", f"{ma}\n")


# -- static facts ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "path, l4t",
    [(DATA / "orin_nano_super_jp62" / "nv_tegra_release", "36.4.3"), (DATA / "agx_orin_jp512" / "nv_tegra_release", "35.4.1")],
)
def test_l4t_release_from_recorded_files(path: Path, l4t: str) -> None:
    assert tj.parse_nv_tegra_release(path.read_text(encoding="utf-8")) == l4t


def test_jetpack_from_package_else_from_the_release_table() -> None:
    assert tj.jetpack_for("36.4.3", (DATA / "orin_nano_super_jp62" / "dpkg-nvidia-jetpack.txt").read_text().strip()) == "6.2.1"
    assert tj.jetpack_for("35.4.1", (DATA / "agx_orin_jp512" / "dpkg-nvidia-jetpack.txt").read_text().strip()) == "5.1.2"
    assert tj.jetpack_for("35.4.1") == "5.1.2"
    assert tj.jetpack_for("36.4.3") == "6.2"
    assert tj.jetpack_for("99.0.0") is None and tj.jetpack_for(None) is None


@pytest.mark.parametrize(
    "name, expected",
    [
        ("orin_nano_super_jp62/nvpmodel-q.txt", ("25W", 1)),
        ("misc/nvpmodel-q-maxn.txt", ("MAXN", 0)),
        ("misc/nvpmodel-q-verbose.txt", ("25W", 1)),
    ],
)
def test_power_mode_from_recorded_nvpmodel_output(name: str, expected: tuple[str, int]) -> None:
    assert tj.parse_nvpmodel_query((DATA / name).read_text(encoding="utf-8")) == expected


def test_power_mode_from_the_status_file_when_nvpmodel_gives_nothing(tmp_path: Path) -> None:
    _write(tmp_path, "/etc/nv_tegra_release", (DATA / "agx_orin_jp512" / "nv_tegra_release").read_text(encoding="utf-8"))
    _write(tmp_path, "/var/lib/nvpmodel/status", "pmode:0000 fmode:quiet\n")
    _write(tmp_path, "/etc/nvpmodel.conf", "< PM_CONFIG DEFAULT=2 >\n< POWER_MODEL ID=0 NAME=MAXN >\nCPU_ONLINE CORE_0 1\n< POWER_MODEL ID=2 NAME=MODE_30W >\n")
    facts = tj.read_facts(tmp_path, run=_runner({}))
    assert facts is not None
    assert (facts.power_mode, facts.power_mode_id, facts.power_mode_default_id) == ("MAXN", 0, 2)
    assert facts.power_mode_source == "/var/lib/nvpmodel/status + /etc/nvpmodel.conf"


def test_facts_of_the_recorded_orin_nano_super(tmp_path: Path) -> None:
    _orin_nano_super_root(tmp_path)
    d = DATA / "orin_nano_super_jp62"
    run = _runner(
        {
            "nvidia-l4t-core": (d / "dpkg-nvidia-l4t-core.txt").read_text().strip(),
            "nvidia-jetpack": (d / "dpkg-nvidia-jetpack.txt").read_text().strip(),
            "nvpmodel": (d / "nvpmodel-q.txt").read_text(),
        }
    )
    facts = tj.read_facts(tmp_path, run=run)
    assert facts is not None
    assert facts.l4t == "36.4.3" and facts.l4t_core_package == "36.4.3-20250107174145" and facts.jetpack == "6.2.1"
    assert (facts.power_mode, facts.power_mode_id, facts.power_mode_source) == ("25W", 1, "nvpmodel -q")
    gpu = next(c for c in facts.clock_domains if c["name"] == "gpu:17000000.gpu")
    assert (gpu["cur_mhz"], gpu["min_mhz"], gpu["max_mhz"], gpu["hw_max_mhz"], gpu["locked"]) == (612.0, 306.0, 1020.0, 1020.0, False)
    assert facts.clocks_locked is False
    assert facts.nvmap_source == "/proc/meminfo NvMapMemUsed"
    assert tj.startup_line(facts) == "jetson: unknown model, L4T 36.4.3 (JetPack 6.2.1), power mode 25W (1), clocks not locked (run sudo jetson_clocks for steady timings)"


def test_clocks_not_locked_on_the_recorded_agx_orin(tmp_path: Path) -> None:
    _write(tmp_path, "/proc/device-tree/model", b"NVIDIA Orin Jetson-Small Developer Kit\0")
    _write(tmp_path, "/etc/nv_tegra_release", (DATA / "agx_orin_jp512" / "nv_tegra_release").read_text(encoding="utf-8"))
    _tree_from_jetson_clocks(tmp_path, (DATA / "agx_orin_jp5_clocks" / "jetson_clocks_show.txt").read_text(encoding="utf-8"))
    facts = tj.read_facts(tmp_path, run=_runner({"nvpmodel": (DATA / "misc" / "nvpmodel-q-maxn.txt").read_text()}))
    assert facts is not None
    assert facts.model == "NVIDIA Orin Jetson-Small Developer Kit"
    cpus = [c for c in facts.clock_domains if c["name"].startswith("cpu:")]
    assert len(cpus) == 9 and {c["max_mhz"] for c in cpus} == {2201.6} and {c["min_mhz"] for c in cpus} == {115.2}
    assert facts.clocks_locked is False
    assert facts.jetpack == "5.1.2"
    assert tj.startup_line(facts) == (
        "jetson: Orin Jetson-Small Developer Kit, L4T 35.4.1 (JetPack 5.1.2), power mode MAXN (0), "
        "clocks not locked (run sudo jetson_clocks for steady timings)"
    )


def test_clocks_locked_on_the_recorded_tx1(tmp_path: Path) -> None:
    """The TX1 after jetson_clocks: every CPU and the GPU at min == max; EMC (debugfs, root) is not judged."""
    _write(tmp_path, "/proc/device-tree/model", b"jetson_tx1\0")
    _tree_from_jetson_clocks(tmp_path, (DATA / "tx1_jp3_clocks" / "jetson_clocks_show.txt").read_text(encoding="utf-8"))
    domains = tj.clock_domains(tmp_path)
    assert [d.name for d in domains] == ["cpu:policy0", "cpu:policy1", "cpu:policy2", "cpu:policy3", "gpu:57000000.gpu"]
    assert domains[-1].cur_mhz == 998.4 and domains[-1].locked is True
    assert tj.clocks_locked(domains) is True
    facts = tj.read_facts(tmp_path, run=_runner({}))
    assert facts is not None and facts.clocks_locked is True and facts.power_mode is None and facts.l4t is None
    assert any("power mode unknown" in n for n in facts.notes)
    assert any("NvMapMemUsed is not in /proc/meminfo" in n for n in facts.notes)
    assert tj.startup_line(facts) == "jetson: jetson_tx1, L4T unknown, power mode unknown, clocks locked"


def test_recorded_agx_orin_model_is_shortened() -> None:
    model = (DATA / "misc" / "device-tree-model-agx-orin-jp61.txt").read_text().strip()
    assert tj.short_model(model) == "Jetson AGX Orin Developer Kit"


# -- tegrastats ----------------------------------------------------------------------------------------------------
def test_tegrastats_jp62_root_idle_and_busy() -> None:
    idle, busy = (tj.parse_tegrastats(line) for line in _lines("jp62_orin_nano_super_root.txt"))
    assert (idle["gpu_load_pct"], idle["gpu_freq_mhz"], idle["emc_load_pct"], idle["emc_freq_mhz"]) == (0.0, 305.0, 15.0, 204.0)
    assert (busy["gpu_load_pct"], busy["gpu_freq_mhz"], busy["emc_load_pct"], busy["emc_freq_mhz"]) == (99.0, 612.0, 61.0, 2133.0)
    # the rail's current value, not tegrastats' running average after the slash
    assert busy["power_VDD_IN_mw"] == 16321.0 and busy["board_power_mw"] == 16321.0
    assert (busy["temp_cpu_c"], busy["temp_gpu_c"], busy["temp_tj_c"]) == (57.125, 58.625, 58.312)
    assert (busy["ram_used_mb"], busy["ram_total_mb"], busy["swap_used_mb"]) == (6712.0, 7620.0, 369.0)
    assert busy["cpu_load_pct"] == pytest.approx(42 / 6) and busy["cpu_online"] == 6.0


def test_tegrastats_jp62_as_a_normal_user_has_no_emc_or_gpu_clock() -> None:
    s = tj.parse_tegrastats(_lines("jp62_orin_nano_super_user.txt")[0])
    assert s["gpu_load_pct"] == 0.0 and "gpu_freq_mhz" not in s
    assert "emc_load_pct" not in s and "emc_freq_mhz" not in s
    assert s["board_power_mw"] == 4673.0 and s["temp_gpu_c"] == 55.468


def test_tegrastats_agx_orin_sums_the_rails_it_measures() -> None:
    """AGX Orin has no VDD_IN rail: the board figure is the sum of its measured rails (NC ones left out)."""
    jp6 = tj.parse_tegrastats(_lines("jp6_agx_orin_64gb_r36.4.4.txt")[0])
    assert jp6["board_power_mw"] == 2412 + 1607 + 4707
    assert jp6["gpu_freq_mhz"] == 0.0 and jp6["emc_freq_mhz"] == 2133.0 and jp6["cpu_online"] == 12.0
    jp5 = tj.parse_tegrastats(_lines("jp5_agx_orin_64gb_uppercase.txt")[0])
    assert jp5["board_power_mw"] == 2340 + 390 + 4025 + 301
    assert "power_NC_mw" not in jp5
    # -256C: sensors not fitted on this module are dropped, fitted ones kept
    assert "temp_gpu_c" not in jp5 and "temp_cv0_c" not in jp5 and jp5["temp_cpu_c"] == 44.562 and jp5["temp_tj_c"] == 44.343


def test_tegrastats_jetpack5_xavier_nx() -> None:
    s = tj.parse_tegrastats(_lines("jp512_xavier_nx.txt")[0])
    assert (s["gpu_freq_mhz"], s["emc_freq_mhz"], s["board_power_mw"], s["temp_thermal_c"]) == (114.0, 204.0, 2763.0, 45.6)


def test_tegrastats_jetpack4_spellings() -> None:
    nano, tx1, tx2 = (tj.parse_tegrastats(line) for line in _lines("jp4_nano_tx1_tx2.txt"))
    assert nano["board_power_mw"] == 900.0 and nano["power_POM_5V_CPU_mw"] == 123.0  # POM_5V_IN 900/943, no unit
    assert tx1["board_power_mw"] == 2532.0 and tx1["gpu_freq_mhz"] == 76.0 and "swap_used_mb" not in tx1
    assert tx2["cpu_online"] == 4.0 and "board_power_mw" not in tx2  # two cores "off"; no rails in that line
    old = tj.parse_tegrastats(_lines("jp3_tx1_old.txt")[0])
    assert (old["cpu_freq_mhz"], old["gpu_load_pct"], old["gpu_freq_mhz"], old["emc_freq_mhz"]) == (1734.0, 39.0, 76.0, 1600.0)


def test_tegrastats_garbage_gives_nothing() -> None:
    assert tj.parse_tegrastats("") == {}
    assert tj.parse_tegrastats("tegrastats: command not found") == {}


# -- one sysfs reading -------------------------------------------------------------------------------------------------
def test_sysfs_sample_of_the_orin_nano_super(tmp_path: Path) -> None:
    _orin_nano_super_root(tmp_path)
    s = tj.read_sample(tmp_path)
    assert s["gpu_load_pct"] == 99.0 and s["gpu_freq_mhz"] == 612.0
    assert (s["temp_cpu_c"], s["temp_gpu_c"], s["temp_tj_c"]) == (57.125, 58.625, 58.312)
    assert "temp_cv0_c" not in s
    assert s["power_VDD_IN_mw"] == pytest.approx(5080 * 3213 / 1000, abs=0.1)
    assert s["board_power_mw"] == s["power_VDD_IN_mw"]
    assert s["board_power_mw"] == pytest.approx(16321.0, rel=0.001)  # the recorded tegrastats figure
    assert "power_NC_mw" not in s
    assert s["nvmap_used_mb"] == round(805068 / 1024, 1)  # the recorded meminfo's NvMapMemUsed


def test_jetpack4_ina3221x_iio_rails(tmp_path: Path) -> None:
    iio = "/sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    for i, (name, mw) in enumerate([("POM_5V_IN", 900), ("POM_5V_GPU", 0), ("POM_5V_CPU", 123)]):  # the recorded Nano line
        _write(tmp_path, f"{iio}/rail_name_{i}", name + "\n")
        _write(tmp_path, f"{iio}/in_power{i}_input", f"{mw}\n")
    assert tj.read_power_rails(tmp_path) == {"POM_5V_IN": 900.0, "POM_5V_GPU": 0.0, "POM_5V_CPU": 123.0}
    assert tj.board_power_mw(tj.read_power_rails(tmp_path)) == (900.0, "POM_5V_IN")


# -- not a Jetson --------------------------------------------------------------------------------------------------------
def test_everything_is_absent_off_a_jetson(tmp_path: Path) -> None:
    assert tj.is_jetson(tmp_path) is False
    assert tj.read_facts(tmp_path) is None
    assert tj.startup_line(root=tmp_path) is None
    assert tj.JetsonSampler.create(tmp_path) is None
    assert tj.read_sample(tmp_path) == {}
    assert tj.clock_domains(tmp_path) == [] and tj.clocks_locked([]) is None
    assert tj.markdown_block({"jetson": False}, [{"key": "a"}], lambda r: "a") == []


@pytest.mark.skipif(tj.is_jetson(), reason="this machine is a Jetson")
def test_this_machine_is_not_a_jetson() -> None:
    from streamer.bench.environment import jetson_fields

    assert tj.read_facts() is None and tj.startup_line() is None and tj.JetsonSampler.create() is None
    fields = jetson_fields()
    assert fields["jetson"] is False and all(v is None for k, v in fields.items() if k != "jetson")


def test_environment_records_the_facts(tmp_path: Path) -> None:
    from streamer.bench.environment import jetson_fields

    _write(tmp_path, "/proc/device-tree/model", b"jetson_tx1\0")
    _tree_from_jetson_clocks(tmp_path, (DATA / "tx1_jp3_clocks" / "jetson_clocks_show.txt").read_text(encoding="utf-8"))
    fields = jetson_fields(tmp_path)
    assert fields["jetson"] is True and fields["jetson_model"] == "jetson_tx1" and fields["jetson_clocks"] == "locked"
    assert fields["jetson_facts"]["clocks_locked"] is True


def test_startup_line_never_raises() -> None:
    broken = tj.JetsonFacts(None, None, None, None, None, None, None, None, "maybe")  # type: ignore[arg-type]
    assert tj.startup_line(broken) is None


# -- the sampler -----------------------------------------------------------------------------------------------------------
def test_running_stat_keeps_min_mean_max_in_fixed_memory() -> None:
    stat = tj.RunningStat()
    assert stat.as_dict() is None
    for v in (3.0, 1.0, 2.0):
        stat.add(v)
    assert stat.as_dict() == {"min": 1.0, "mean": 2.0, "max": 3.0, "n": 3}
    assert not hasattr(stat, "__dict__")


def test_sampler_reads_sysfs_and_a_running_tegrastats(tmp_path: Path) -> None:
    """A real child process prints the recorded tegrastats lines; sysfs wins where it has the figure."""
    _orin_nano_super_root(tmp_path)
    feed = tmp_path / "lines.txt"
    feed.write_text("\n".join(_lines("jp62_orin_nano_super_root.txt")) + "\n", encoding="utf-8")
    script = "import sys, time\nfor line in open(sys.argv[1]):\n    print(line, end='', flush=True)\ntime.sleep(600)\n"
    sampler = tj.JetsonSampler(tmp_path, interval_s=0.05, tegrastats=[sys.executable, "-c", script, str(feed)])
    with sampler:
        deadline = time.monotonic() + 30
        while sampler.summary()["tegrastats_lines"] < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    proc = sampler._proc
    assert proc is not None and proc.poll() is not None  # stopped with the sampler
    s = sampler.summary()
    assert s["tegrastats_lines"] == 2 and s["sysfs_samples"] >= 2 and s["tegrastats_error"] is None
    m = s["metrics"]
    assert m["gpu_load_pct"]["source"] == "sysfs" and m["gpu_load_pct"]["max"] == 99.0
    assert m["emc_freq_mhz"] == {"min": 204.0, "mean": 1168.5, "max": 2133.0, "n": 2, "source": "tegrastats"}
    assert m["nvmap_used_mb"]["max"] == round(805068 / 1024, 1)
    assert s["board_power_method"] == "sysfs INA3221: VDD_IN"
    block = tj.markdown_block(
        {"jetson": True, "jetson_facts": {"model": "NVIDIA Jetson Orin Nano", "l4t": "36.4.3", "jetpack": "6.2.1", "power_mode": "25W",
                                          "power_mode_id": 1, "clocks_locked": False, "notes": []}},
        [{"key": "k", "jetson": s}],
        lambda r: "resnet18 tensorrt fp16",
    )
    text = "\n".join(block)
    assert "## Jetson" in text and "Jetson Orin Nano, L4T 36.4.3 (JetPack 6.2.1), power mode 25W (1), clocks not locked" in text
    row = next(line for line in block if line.startswith("| resnet18"))
    assert "| 99/99 |" in row and "| 612 |" in row and "| 1168 |" in row


def test_sampler_without_tegrastats_binary_reports_the_error(tmp_path: Path) -> None:
    _orin_nano_super_root(tmp_path)
    sampler = tj.JetsonSampler(tmp_path, interval_s=0.05, tegrastats=[str(tmp_path / "no-such-tegrastats")])
    sampler.start()
    sampler.stop()
    s = sampler.summary()
    assert s["tegrastats_lines"] == 0 and s["tegrastats_error"] and s["metrics"]["gpu_freq_mhz"]["source"] == "sysfs"
