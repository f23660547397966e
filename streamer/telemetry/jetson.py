"""NVIDIA Jetson facts and telemetry, read without root.

Static facts (:func:`read_facts`): the board model (``/proc/device-tree/model``),
the L4T release (``/etc/nv_tegra_release``; the ``nvidia-l4t-core`` and
``nvidia-jetpack`` package versions through ``dpkg-query`` when present), the
power mode (``nvpmodel -q``, which a normal user may run; else
``/var/lib/nvpmodel/status`` with the names in ``/etc/nvpmodel.conf``) and
whether the clocks are locked.  ``jetson_clocks --show`` needs root, so clocks
are judged from sysfs instead: ``jetson_clocks`` pins every CPU policy's
``scaling_min_freq`` to its ``scaling_max_freq`` and the GPU devfreq node's
``min_freq`` to its ``max_freq``; where every readable domain has min == max the
clocks are locked.

During a run (:class:`JetsonSampler`, a background thread with fixed memory:
min/mean/max per metric, never the samples): GPU load and frequency, EMC
frequency, CPU/GPU/junction temperatures, the INA3221 power rails and the
unified memory the GPU holds through nvmap (``NvMapMemUsed`` in
``/proc/meminfo``; ``/sys/kernel/debug/nvmap`` is root only).  Where
``tegrastats`` is on PATH its lines (``tegrastats --interval N``) are parsed too
and fill what sysfs does not give a normal user (EMC load, for one).

Every reader takes a ``root`` path (``/`` on a device; a fake tree in tests) and
degrades to None or an absent key on a machine that is not a Jetson: nothing
here raises for a missing file, a missing tool or a value it cannot read.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path("/")
Runner = Callable[[list[str]], "str | None"]

# GPU devfreq nodes by SoC: Orin (JetPack 5 names it after the ga10b block, JetPack 6 "gpu"),
# Xavier (gv11b), TX2 (gp10b), Nano/TX1 (57000000.gpu).
_GPU_DEVFREQ = ("17000000.ga10b", "17000000.gpu", "17000000.gv11b", "17000000.gp10b", "57000000.gpu")
_GPU_LOAD = (
    "sys/devices/platform/gpu.0/load",
    "sys/devices/gpu.0/load",
    "sys/devices/platform/bus@0/17000000.gpu/load",
    "sys/devices/17000000.ga10b/load",
    "sys/devices/17000000.gv11b/load",
    "sys/devices/57000000.gpu/load",
)
# Rails that carry the whole module's input power, by generation (JetPack 5/6 Orin Nano/NX and Xavier: VDD_IN;
# JetPack 4 Nano: POM_5V_IN).  AGX Orin has no such rail: its board figure is the sum of the rails it measures.
_INPUT_RAILS = ("VDD_IN", "POM_5V_IN")
_MIN_REAL_TEMP_C = -40.0  # tegrastats and the thermal zones report -256 C for a sensor that is not fitted

# L4T release -> JetPack release (NVIDIA's Jetson Linux archive); used only when nvidia-jetpack is not installed.
_JETPACK_BY_L4T = {
    "35.1.0": "5.0.2", "35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2", "35.5.0": "5.1.3",
    "35.6.0": "5.1.4", "35.6.1": "5.1.5", "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1",
    "36.4.3": "6.2", "36.4.4": "6.2.1",
}

NVMAP_ROOT_NOTE = (
    "unified memory held by the GPU: NvMapMemUsed from /proc/meminfo; "
    "the per-process split (/sys/kernel/debug/nvmap) is readable by root only"
)


def _path(root: Path, absolute: str) -> Path:
    return root / absolute.lstrip("/")


def _read(path: Path) -> str | None:
    try:
        return path.read_bytes().rstrip(b"\0\n ").decode("utf-8", "replace").strip()
    except OSError:
        return None


def _read_number(path: Path) -> float | None:
    text = _read(path)
    if text is None:
        return None
    try:
        value = float(text.split()[0])
    except (ValueError, IndexError):
        return None
    return value if math.isfinite(value) else None


def run_command(cmd: list[str], timeout: float = 5.0) -> str | None:
    """stdout of ``cmd`` when it ran and succeeded, else None (never raises)."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = (done.stdout or "").strip()
    return text if done.returncode == 0 and text else None


# -- static facts ------------------------------------------------------------------------------------------------
def board_model(root: Path = ROOT) -> str | None:
    return _read(_path(root, "/proc/device-tree/model")) or None


def is_jetson(root: Path = ROOT) -> bool:
    """True on an NVIDIA Jetson (L4T installed, or a Tegra device tree)."""
    if _path(root, "/etc/nv_tegra_release").is_file():
        return True
    model = (board_model(root) or "").lower()
    if "jetson" in model:
        return True
    compatible = _read(_path(root, "/proc/device-tree/compatible")) or ""
    return "nvidia,tegra" in compatible.lower()


def parse_nv_tegra_release(text: str | None) -> str | None:
    """``# R36 (release), REVISION: 4.3, ...`` -> ``36.4.3`` (``35.4.1``...); None if not that shape."""
    if not text:
        return None
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+)(?:\.(\d+))?", text)
    if not m:
        return None
    return f"{m.group(1)}.{m.group(2)}.{m.group(3) or 0}"


def jetpack_for(l4t: str | None, jetpack_package: str | None = None) -> str | None:
    """The JetPack release: the nvidia-jetpack package's (``6.2.1+b38`` -> ``6.2.1``), else from the L4T table."""
    if jetpack_package:
        return re.split(r"[+-]", jetpack_package, maxsplit=1)[0]
    return _JETPACK_BY_L4T.get(l4t or "")


def parse_nvpmodel_query(text: str | None) -> tuple[str | None, int | None]:
    """``nvpmodel -q`` (plain or ``--verbose``) -> (mode name, mode id)."""
    if not text:
        return None, None
    name = None
    mode_id = None
    lines = [line.strip() for line in text.splitlines()]
    for i, line in enumerate(lines):
        m = re.search(r"NV Power Mode:\s*(\S+)", line)
        if m:
            name = m.group(1)
            for nxt in lines[i + 1 : i + 3]:
                if nxt.isdigit():
                    mode_id = int(nxt)
                    break
            break
    return name, mode_id


def parse_nvpmodel_conf(text: str | None) -> tuple[dict[int, str], int | None]:
    """``/etc/nvpmodel.conf`` -> ({mode id: name}, default mode id)."""
    modes: dict[int, str] = {}
    default = None
    for m in re.finditer(r"<\s*POWER_MODEL\s+ID=(\d+)\s+NAME=([^\s>]+)\s*>", text or ""):
        modes[int(m.group(1))] = m.group(2)
    found = re.search(r"<\s*PM_CONFIG\s+DEFAULT=(\d+)\s*>", text or "")
    if found:
        default = int(found.group(1))
    return modes, default


def parse_nvpmodel_status(text: str | None) -> int | None:
    """``/var/lib/nvpmodel/status`` (``pmode:0002 fmode:quiet``) -> 2."""
    m = re.search(r"pmode:(\d+)", text or "")
    return int(m.group(1)) if m else None


@dataclass
class ClockDomain:
    """One frequency domain as sysfs shows it (MHz)."""

    name: str
    cur_mhz: float | None
    min_mhz: float | None
    max_mhz: float | None
    hw_max_mhz: float | None = None

    @property
    def locked(self) -> bool | None:
        if self.min_mhz is None or self.max_mhz is None:
            return None
        return self.min_mhz >= self.max_mhz


def _devfreq_dirs(root: Path) -> list[Path]:
    base = _path(root, "/sys/class/devfreq")
    try:
        return sorted(p for p in base.iterdir() if (p / "cur_freq").exists())
    except OSError:
        return []


def gpu_devfreq(root: Path = ROOT) -> Path | None:
    dirs = _devfreq_dirs(root)
    for name in _GPU_DEVFREQ:
        for d in dirs:
            if d.name == name:
                return d
    for d in dirs:
        if "gpu" in d.name or re.search(r"g[a-z]\d+b$", d.name):
            return d
    return None


def emc_devfreq(root: Path = ROOT) -> Path | None:
    for d in _devfreq_dirs(root):
        if "emc" in d.name or "external-memory-controller" in d.name or d.name == "bwmgr":  # bwmgr: Thor
            return d
    return None


def _hz_to_mhz(value: float | None, scale: float = 1e6) -> float | None:
    return None if value is None else round(value / scale, 1)


def clock_domains(root: Path = ROOT) -> list[ClockDomain]:
    """CPU policies (cpufreq, kHz) and the GPU/EMC devfreq nodes (Hz) that sysfs lets a normal user read."""
    out: list[ClockDomain] = []
    policies = _path(root, "/sys/devices/system/cpu/cpufreq")
    try:
        policy_dirs = sorted(p for p in policies.iterdir() if p.name.startswith("policy"))
    except OSError:
        policy_dirs = []
    if not policy_dirs:  # older kernels: one cpufreq folder per CPU
        try:
            policy_dirs = sorted(p / "cpufreq" for p in _path(root, "/sys/devices/system/cpu").glob("cpu[0-9]*") if (p / "cpufreq").is_dir())
        except OSError:
            policy_dirs = []
    for p in policy_dirs:
        name = p.name if p.name.startswith("policy") else p.parent.name
        out.append(
            ClockDomain(
                f"cpu:{name}",
                _hz_to_mhz(_read_number(p / "scaling_cur_freq"), 1e3),
                _hz_to_mhz(_read_number(p / "scaling_min_freq"), 1e3),
                _hz_to_mhz(_read_number(p / "scaling_max_freq"), 1e3),
                _hz_to_mhz(_read_number(p / "cpuinfo_max_freq"), 1e3),
            )
        )
    for label, node in (("gpu", gpu_devfreq(root)), ("emc", emc_devfreq(root))):
        if node is None:
            continue
        avail = _read(node / "available_frequencies")
        hw_max = None
        if avail:
            try:
                hw_max = max(float(v) for v in avail.split())
            except ValueError:
                hw_max = None
        out.append(
            ClockDomain(
                f"{label}:{node.name}",
                _hz_to_mhz(_read_number(node / "cur_freq")),
                _hz_to_mhz(_read_number(node / "min_freq")),
                _hz_to_mhz(_read_number(node / "max_freq")),
                _hz_to_mhz(hw_max),
            )
        )
    return out


def clocks_locked(domains: Iterable[ClockDomain]) -> bool | None:
    """True when every readable CPU and GPU domain has min == max (what ``jetson_clocks`` sets); None if none is readable.

    EMC is left out: ``jetson_clocks`` pins it through debugfs, which a normal user cannot read.
    """
    verdicts = [d.locked for d in domains if not d.name.startswith("emc:") and d.locked is not None]
    if not verdicts:
        return None
    return all(verdicts)


@dataclass
class JetsonFacts:
    """What a report needs to know about the Jetson it ran on (None where it could not be read)."""

    model: str | None
    l4t: str | None
    l4t_core_package: str | None
    jetpack: str | None
    power_mode: str | None
    power_mode_id: int | None
    power_mode_source: str | None
    power_mode_default_id: int | None
    clocks_locked: bool | None
    clock_domains: list[dict[str, Any]] = field(default_factory=list)
    nvmap_source: str | None = None
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_facts(root: Path = ROOT, run: Runner | None = None) -> JetsonFacts | None:
    """The static facts of this Jetson, or None on a machine that is not one."""
    if not is_jetson(root):
        return None
    runner: Runner = run or run_command
    notes: list[str] = []
    l4t = parse_nv_tegra_release(_read(_path(root, "/etc/nv_tegra_release")))
    core = _safe(lambda: runner(["dpkg-query", "-W", "-f=${Version}", "nvidia-l4t-core"]))
    if l4t is None and core:
        m = re.match(r"(\d+\.\d+\.\d+)", core)
        l4t = m.group(1) if m else None
    jetpack_pkg = _safe(lambda: runner(["dpkg-query", "-W", "-f=${Version}", "nvidia-jetpack"]))
    name, mode_id = parse_nvpmodel_query(_safe(lambda: runner(["nvpmodel", "-q"])))
    modes, default = parse_nvpmodel_conf(_read(_path(root, "/etc/nvpmodel.conf")))
    source = "nvpmodel -q" if name or mode_id is not None else None
    if name is None and mode_id is None:
        mode_id = parse_nvpmodel_status(_read(_path(root, "/var/lib/nvpmodel/status")))
        if mode_id is not None:
            source = "/var/lib/nvpmodel/status"
    if name is None and mode_id is not None and mode_id in modes:
        name = modes[mode_id]
        source = f"{source} + /etc/nvpmodel.conf"
    if name is None and mode_id is None:
        notes.append("power mode unknown: nvpmodel -q gave nothing and /var/lib/nvpmodel/status is not readable")
    domains = clock_domains(root)
    locked = clocks_locked(domains)
    if locked is None:
        notes.append("clocks unknown: no cpufreq or GPU devfreq node is readable")
    nvmap = "/proc/meminfo NvMapMemUsed" if _meminfo_kb(root, "NvMapMemUsed") is not None else None
    if nvmap is None:
        notes.append("NvMapMemUsed is not in /proc/meminfo on this kernel; /sys/kernel/debug/nvmap needs root")
    return JetsonFacts(
        model=board_model(root),
        l4t=l4t,
        l4t_core_package=core,
        jetpack=jetpack_for(l4t, jetpack_pkg),
        power_mode=name,
        power_mode_id=mode_id,
        power_mode_source=source,
        power_mode_default_id=default,
        clocks_locked=locked,
        clock_domains=[{**asdict(d), "locked": d.locked} for d in domains],
        nvmap_source=nvmap,
        notes=notes,
    )


def _safe(fn: Callable[[], str | None]) -> str | None:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - a probe that fails is a fact we do not have
        return None


def short_model(model: str | None) -> str | None:
    """``NVIDIA Jetson AGX Orin Developer Kit`` -> ``Jetson AGX Orin Developer Kit``."""
    if not model:
        return None
    return re.sub(r"^NVIDIA\s+", "", model).strip() or None


def startup_line(facts: JetsonFacts | None = None, root: Path = ROOT, run: Runner | None = None) -> str | None:
    """One line for the start of ``streamer run`` on a Jetson; None elsewhere (never raises).

    e.g. ``jetson: Jetson AGX Orin Developer Kit, L4T 36.4.3 (JetPack 6.2), power mode MAXN (0), clocks locked``
    """
    try:
        if facts is None:
            facts = read_facts(root, run)
        if facts is None:
            return None
        parts = [short_model(facts.model) or "unknown model"]
        if facts.l4t:
            parts.append(f"L4T {facts.l4t}" + (f" (JetPack {facts.jetpack})" if facts.jetpack else ""))
        else:
            parts.append("L4T unknown")
        if facts.power_mode or facts.power_mode_id is not None:
            mode = facts.power_mode or "?"
            parts.append(f"power mode {mode}" + (f" ({facts.power_mode_id})" if facts.power_mode_id is not None else ""))
        else:
            parts.append("power mode unknown")
        parts.append({True: "clocks locked", False: "clocks not locked (run sudo jetson_clocks for steady timings)", None: "clocks unknown"}[facts.clocks_locked])
        return "jetson: " + ", ".join(parts)
    except Exception:  # noqa: BLE001 - a status line must never stop a run
        return None


# -- one reading of the dynamic figures -------------------------------------------------------------------------
def _meminfo_kb(root: Path, key: str) -> float | None:
    text = _read(_path(root, "/proc/meminfo"))
    if not text:
        return None
    m = re.search(rf"^{re.escape(key)}:\s*(\d+)\s*kB", text, re.MULTILINE)
    return float(m.group(1)) if m else None


def _zone_key(kind: str) -> str:
    name = re.sub(r"[-_]thermal$", "", kind.strip().lower())  # "cpu-thermal" -> cpu; a zone named "thermal" stays
    return "temp_" + re.sub(r"[^a-z0-9]+", "_", name).strip("_") + "_c"


def read_temperatures(root: Path = ROOT) -> dict[str, float]:
    out: dict[str, float] = {}
    base = _path(root, "/sys/class/thermal")
    try:
        zones = sorted(base.glob("thermal_zone*"))
    except OSError:
        return out
    for zone in zones:
        kind = _read(zone / "type")
        milli = _read_number(zone / "temp")
        if not kind or milli is None:
            continue
        celsius = milli / 1000.0
        if celsius <= _MIN_REAL_TEMP_C:
            continue
        out.setdefault(_zone_key(kind), round(celsius, 3))
    return out


def read_power_rails(root: Path = ROOT) -> dict[str, float]:
    """mW per INA3221 rail: ``in*_input`` (mV) x ``curr*_input`` (mA) under the JetPack 5/6 hwmon driver,
    ``in_power*_input`` (mW) under JetPack 4's ina3221x IIO driver.  Rails labelled NC are skipped."""
    out: dict[str, float] = {}
    for hwmon in sorted(_path(root, "/sys/bus/i2c/drivers/ina3221").glob("*/hwmon/hwmon*")):
        for label_file in sorted(hwmon.glob("in*_label")):
            m = re.match(r"in(\d+)_label$", label_file.name)
            label = _read(label_file)
            if not m or not label or label.upper() == "NC":
                continue
            mv = _read_number(hwmon / f"in{m.group(1)}_input")
            ma = _read_number(hwmon / f"curr{m.group(1)}_input")
            if mv is None or ma is None:
                continue
            out[label] = round(mv * ma / 1000.0, 1)
    for iio in sorted(_path(root, "/sys/bus/i2c/drivers/ina3221x").glob("*/iio:device*")):
        for name_file in sorted(iio.glob("rail_name_*")):
            idx = name_file.name.rsplit("_", 1)[-1]
            label = _read(name_file)
            mw = _read_number(iio / f"in_power{idx}_input")
            if label and mw is not None:
                out[label] = mw
    return out


def board_power_mw(rails: dict[str, float]) -> tuple[float | None, str | None]:
    """The module's input power and how it was found: its input rail, else the sum of the measured rails."""
    for name in _INPUT_RAILS:
        if name in rails:
            return rails[name], name
    if rails:
        return round(sum(rails.values()), 1), "sum of " + "+".join(sorted(rails))
    return None, None


def read_sample(root: Path = ROOT) -> dict[str, float]:
    """One reading of every dynamic figure sysfs and /proc give a normal user (absent keys: not readable)."""
    out: dict[str, float] = {}
    for rel in _GPU_LOAD:
        load = _read_number(root / rel)
        if load is not None:
            out["gpu_load_pct"] = round(load / 10.0, 1)  # per mille
            break
    node = gpu_devfreq(root)
    if node is not None:
        freq = _read_number(node / "cur_freq")
        if freq is not None:
            out["gpu_freq_mhz"] = round(freq / 1e6, 1)
    node = emc_devfreq(root)
    if node is not None:
        freq = _read_number(node / "cur_freq")
        if freq is not None:
            out["emc_freq_mhz"] = round(freq / 1e6, 1)
    out.update(read_temperatures(root))
    rails = read_power_rails(root)
    for name, mw in rails.items():
        out[f"power_{name}_mw"] = mw
    total, _ = board_power_mw(rails)
    if total is not None:
        out["board_power_mw"] = total
    nvmap = _meminfo_kb(root, "NvMapMemUsed")
    if nvmap is not None:
        out["nvmap_used_mb"] = round(nvmap / 1024.0, 1)
    return out


# -- tegrastats ---------------------------------------------------------------------------------------------------
_TS_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_TS_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_TS_CPU = re.compile(r"\bCPU \[([^\]]*)\](?:@(\d+))?", re.IGNORECASE)
_TS_EMC = re.compile(r"\bEMC(?:_FREQ)? (\d+)%(?:@(\d+))?")
_TS_GR3D = re.compile(r"\bGR3D(?:_FREQ)? (\d+)%(?:@\[?([\d,]+)\]?)?")
_TS_TEMP = re.compile(r"\b([A-Za-z][A-Za-z0-9_]*)@(-?\d+(?:\.\d+)?)C\b")
_TS_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_NOT_RAILS = {"RAM", "SWAP", "IRAM"}


def parse_tegrastats(line: str) -> dict[str, float]:
    """One ``tegrastats`` line -> flat figures (JetPack 4, 5 and 6 spellings).

    ``RAM x/yMB``, ``SWAP x/yMB``, ``CPU [a%@f,off,...]`` (mean load of the online cores, their mean MHz),
    ``EMC_FREQ x%@MHz``, ``GR3D_FREQ x%@MHz`` or ``x%@[MHz,MHz]`` (per GPC: the highest), ``name@45.5C``
    (``-256C``, a sensor not fitted, is dropped), rails ``VDD_IN 4000mW/4100mW`` or ``POM_5V_IN 4520/4680``
    (current value; the average after the slash is tegrastats' own since it started).
    """
    out: dict[str, float] = {}
    m = _TS_RAM.search(line)
    if m:
        out["ram_used_mb"], out["ram_total_mb"] = float(m.group(1)), float(m.group(2))
    m = _TS_SWAP.search(line)
    if m:
        out["swap_used_mb"], out["swap_total_mb"] = float(m.group(1)), float(m.group(2))
    m = _TS_CPU.search(line)
    if m:
        loads: list[float] = []
        freqs: list[float] = []
        for item in m.group(1).split(","):
            core = re.match(r"\s*(\d+)%(?:@(\d+))?", item)
            if core:
                loads.append(float(core.group(1)))
                if core.group(2):
                    freqs.append(float(core.group(2)))
        if m.group(2):
            freqs = [float(m.group(2))] * len(loads)
        if loads:
            out["cpu_load_pct"] = round(sum(loads) / len(loads), 2)
            out["cpu_online"] = float(len(loads))
        if freqs:
            out["cpu_freq_mhz"] = round(sum(freqs) / len(freqs), 1)
    m = _TS_EMC.search(line)
    if m:
        out["emc_load_pct"] = float(m.group(1))
        if m.group(2):
            out["emc_freq_mhz"] = float(m.group(2))
    m = _TS_GR3D.search(line)
    if m:
        out["gpu_load_pct"] = float(m.group(1))
        if m.group(2):
            values = [float(v) for v in m.group(2).split(",") if v]
            if values:
                out["gpu_freq_mhz"] = max(values)
    for name, value in _TS_TEMP.findall(line):
        celsius = float(value)
        if celsius > _MIN_REAL_TEMP_C:
            out.setdefault(_zone_key(name), celsius)
    rails: dict[str, float] = {}
    for name, current, _average in _TS_RAIL.findall(line):
        if name in _NOT_RAILS or name == "NC":
            continue
        rails[name] = float(current)
        out[f"power_{name}_mw"] = float(current)
    total, _ = board_power_mw(rails)
    if total is not None:
        out["board_power_mw"] = total
    return out


def tegrastats_command(interval_ms: int) -> list[str] | None:
    path = shutil.which("tegrastats")
    return [path, "--interval", str(int(interval_ms))] if path else None


# -- the sampler --------------------------------------------------------------------------------------------------
class RunningStat:
    """min / mean / max / count of one metric, in constant memory."""

    __slots__ = ("n", "total", "lo", "hi")

    def __init__(self) -> None:
        self.n = 0
        self.total = 0.0
        self.lo = math.inf
        self.hi = -math.inf

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.lo = min(self.lo, value)
        self.hi = max(self.hi, value)

    def as_dict(self) -> dict[str, float | int] | None:
        if self.n == 0:
            return None
        return {"min": self.lo, "mean": round(self.total / self.n, 3), "max": self.hi, "n": self.n}


class JetsonSampler:
    """Samples sysfs (and ``tegrastats`` where present) on a background thread while a case runs.

    ``start()`` / ``stop()`` (or ``with``); ``summary()`` gives, per metric, min/mean/max and where it came
    from (sysfs is preferred; tegrastats fills what sysfs lacks).  Memory does not grow with run time.
    """

    def __init__(
        self,
        root: Path = ROOT,
        interval_s: float = 0.5,
        tegrastats: list[str] | None | bool = True,
    ) -> None:
        self.root = root
        self.interval_s = interval_s
        if tegrastats is True:
            self._ts_cmd = tegrastats_command(max(100, int(interval_s * 1000)))
        elif tegrastats is False or tegrastats is None:
            self._ts_cmd = None
        else:
            self._ts_cmd = list(tegrastats)
        self._sysfs: dict[str, RunningStat] = {}
        self._ts: dict[str, RunningStat] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reader: threading.Thread | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._ts_lines = 0
        self._ts_error: str | None = None
        self._board_method: str | None = None
        self.sysfs_samples = 0

    @classmethod
    def create(cls, root: Path = ROOT, interval_s: float = 0.5) -> "JetsonSampler | None":
        """A sampler on a Jetson, None elsewhere."""
        try:
            return cls(root, interval_s) if is_jetson(root) else None
        except Exception:  # noqa: BLE001 - telemetry must never stop a case
            return None

    def __enter__(self) -> "JetsonSampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "JetsonSampler":
        self._sample_sysfs()
        self._thread = threading.Thread(target=self._loop, name="jetson-telemetry", daemon=True)
        self._thread.start()
        if self._ts_cmd:
            try:
                self._proc = subprocess.Popen(
                    self._ts_cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, bufsize=1
                )
            except OSError as exc:
                self._ts_error = f"{type(exc).__name__}: {exc}"
                self._proc = None
            if self._proc is not None:
                self._reader = threading.Thread(target=self._read_tegrastats, name="jetson-tegrastats", daemon=True)
                self._reader.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=max(2.0, 4 * self.interval_s))
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=2.0)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=2.0)
            if self._reader is not None:
                self._reader.join(timeout=2.0)
            if proc.stdout is not None:
                proc.stdout.close()
        self._sample_sysfs()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample_sysfs()

    def _sample_sysfs(self) -> None:
        try:
            values = read_sample(self.root)
            rails = {k[len("power_") : -len("_mw")]: v for k, v in values.items() if k.startswith("power_")}
            _, method = board_power_mw(rails)
        except Exception:  # noqa: BLE001 - a failed reading is a missing sample
            return
        with self._lock:
            self.sysfs_samples += 1
            if method:
                self._board_method = self._board_method or f"sysfs INA3221: {method}"
            for key, value in values.items():
                self._sysfs.setdefault(key, RunningStat()).add(value)

    def _read_tegrastats(self) -> None:
        proc = self._proc
        if proc is None or proc.stdout is None:
            return
        try:
            for line in proc.stdout:
                values = parse_tegrastats(line)
                if not values:
                    continue
                with self._lock:
                    self._ts_lines += 1
                    for key, value in values.items():
                        self._ts.setdefault(key, RunningStat()).add(value)
        except (OSError, ValueError):
            return

    def summary(self) -> dict[str, Any]:
        """Per metric min/mean/max/n and its source, plus how board power and unified memory were read."""
        with self._lock:
            metrics: dict[str, Any] = {}
            for key in sorted(set(self._sysfs) | set(self._ts)):
                if key in self._sysfs and self._sysfs[key].n:
                    stat, source = self._sysfs[key], "sysfs"
                else:
                    stat, source = self._ts[key], "tegrastats"
                d = stat.as_dict()
                if d is not None:
                    metrics[key] = {**d, "source": source}
            board = self._board_method
            if board is None and "board_power_mw" in metrics and metrics["board_power_mw"]["source"] == "tegrastats":
                board = "tegrastats rails"
            return {
                "interval_s": self.interval_s,
                "sysfs_samples": self.sysfs_samples,
                "tegrastats_lines": self._ts_lines,
                "tegrastats": " ".join(self._ts_cmd) if self._ts_cmd else None,
                "tegrastats_error": self._ts_error,
                "board_power_method": board,
                "nvmap_note": NVMAP_ROOT_NOTE if "nvmap_used_mb" in metrics else "NvMapMemUsed not in /proc/meminfo; /sys/kernel/debug/nvmap needs root",
                "metrics": metrics,
            }


# -- report -------------------------------------------------------------------------------------------------------
def _stat(summary: dict[str, Any] | None, key: str) -> dict[str, Any] | None:
    if not summary:
        return None
    value = (summary.get("metrics") or {}).get(key)
    return value if isinstance(value, dict) else None


def _fmt(stat: dict[str, Any] | None, what: str = "mean", digits: int = 0, scale: float = 1.0) -> str:
    if not stat or stat.get(what) is None:
        return "—"
    return f"{stat[what] * scale:.{digits}f}"


def _first(summary: dict[str, Any] | None, keys: Iterable[str]) -> dict[str, Any] | None:
    for key in keys:
        stat = _stat(summary, key)
        if stat is not None:
            return stat
    return None


def markdown_block(env: dict[str, Any], rows: list[dict[str, Any]], label: Callable[[dict[str, Any]], str]) -> list[str]:
    """The report's "Jetson" section: the static facts, then one line per case; [] off a Jetson."""
    facts = env.get("jetson_facts")
    cases = [r for r in rows if r.get("jetson")]
    if not env.get("jetson") and not cases:
        return []
    lines = ["## Jetson", ""]
    if isinstance(facts, dict):
        known: dict[str, Any] = {k: facts.get(k) for k in JetsonFacts.__dataclass_fields__}
        known["clock_domains"] = known["clock_domains"] or []
        known["notes"] = known["notes"] or []
        line = startup_line(JetsonFacts(**known))
        if line:
            lines.append(f"- {line[len('jetson: '):]}")
        for note in facts.get("notes") or []:
            lines.append(f"- note: {note}")
    lines.append("")
    if not cases:
        lines += ["No case recorded telemetry.", ""]
        return lines
    header = ["case", "GPU load % mean/max", "GPU MHz mean", "EMC MHz mean", "CPU °C max", "GPU °C max",
              "board W mean/max", "nvmap MB max"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for r in cases:
        s = r["jetson"]
        load = _stat(s, "gpu_load_pct")
        power = _stat(s, "board_power_mw")
        cells = [
            label(r),
            f"{_fmt(load)}/{_fmt(load, 'max')}",
            _fmt(_stat(s, "gpu_freq_mhz")),
            _fmt(_stat(s, "emc_freq_mhz")),
            _fmt(_first(s, ("temp_cpu_c", "temp_bcpu_c", "temp_mcpu_c")), "max", 1),
            _fmt(_first(s, ("temp_gpu_c", "temp_gpu_therm_c")), "max", 1),
            f"{_fmt(power, digits=2, scale=1e-3)}/{_fmt(power, 'max', 2, 1e-3)}",
            _fmt(_stat(s, "nvmap_used_mb"), "max"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    methods = sorted({str(r["jetson"].get("board_power_method")) for r in cases if r["jetson"].get("board_power_method")})
    lines += [
        "",
        "Sampled every "
        f"{cases[0]['jetson'].get('interval_s')} s from sysfs (GPU load and devfreq, thermal zones, INA3221 rails, "
        "/proc/meminfo NvMapMemUsed) and tegrastats where it runs; min/mean/max over the measured phases "
        "(network, output change, pipeline, replay). Board power: " + ("; ".join(methods) or "not readable") + ".",
        "",
    ]
    return lines
