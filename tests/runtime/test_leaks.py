"""No leaks, no debris: unloading a model unmaps its library (300 load/unload cycles
keep RSS and the mappings flat), a killed save never leaves a corrupt file nor, after
the next save, a temporary one, and saved files honour the umask."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sliver.common.files import atomic_write
from sliver.runtime.artifact import read

LEAK = textwrap.dedent(
    """
    import gc, sys
    from sliver.runtime.artifact import load

    def rss_mb():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024

    def library_mappings():
        return sum(1 for line in open("/proc/self/maps") if line.rstrip().endswith(("lib.so", "lib.so (deleted)")))

    path, cycles = sys.argv[1], int(sys.argv[2])
    for i in range(cycles + 1):
        model = load(path)
        model.run(*model.golden_inputs())
        if i % 2:
            model.close()  # half closed explicitly, half dropped
        del model
        if i == 20:
            gc.collect()
            rss0, maps0 = rss_mb(), library_mappings()
    gc.collect()
    print("LEAK", rss0, rss_mb(), maps0, library_mappings())
    """
)


def test_300_load_unload_cycles_keep_memory_and_mappings_flat(example_x86):
    proc = subprocess.run([sys.executable, "-c", LEAK, str(example_x86), "300"], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TVM_USE_RUNTIME_LIB": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rss0, rss1, maps0, maps1 = map(float, proc.stdout.split("LEAK ")[1].split())
    print(f"\n300 load/unload cycles: RSS {rss0:.0f} -> {rss1:.0f} MB, library mappings {maps0:.0f} -> {maps1:.0f}")
    assert maps0 == maps1 == 0  # every library unmapped (the leak kept 5 mappings per load)
    assert rss1 - rss0 < 20  # MB (the leak grew 0.5 MB per load)


def test_a_closed_model_says_so(example_x86):
    from sliver.common.errors import ArtifactError
    from sliver.runtime.artifact import load

    with load(example_x86) as model:
        model.run(*model.golden_inputs())
    with pytest.raises(ArtifactError, match="the model was closed"):
        model.run(*model.golden_inputs())


# --- saving ---------------------------------------------------------------------------

SAVER = textwrap.dedent(
    """
    import sys
    from sliver.runtime.artifact import read
    import dataclasses, hashlib

    art = read(sys.argv[1])
    lib = art.library + bytes(int(sys.argv[3]))  # a library big enough to take a while
    m = art.manifest
    art = dataclasses.replace(art, library=lib, manifest=dataclasses.replace(
        m, library=dataclasses.replace(m.library, sha256=hashlib.sha256(lib).hexdigest(), bytes=len(lib))))
    print("ready", flush=True)
    while True:
        art.save(sys.argv[2])
    """
)


def _temporaries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_killed_saves_never_corrupt_and_leave_no_debris_after_the_next_save(example_x86, tmp_path):
    target = tmp_path / "model.sliver"
    rng = random.Random(7)
    lib_sizes = set()
    for kill in range(20):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(example_x86), str(target), str(40 << 20)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
        if target.exists():  # the first save may not have finished yet
            art = read(target)  # never corrupt: the old file or the new one, whole
            lib_sizes.add(len(art.library))
    assert lib_sizes, "no save finished in 20 tries: the kills came too early to test anything"
    left = _temporaries(tmp_path)
    print(f"\n20 killed saves: {len(left)} temporary files left, target intact")
    # the next save removes what the killed writers left
    read(target).save(target)
    assert _temporaries(tmp_path) == []
    read(target)


def test_saved_files_honour_the_umask_and_keep_an_existing_mode(example_x86, tmp_path):
    art = read(example_x86)
    old = os.umask(0o022)
    try:
        assert art.save(tmp_path / "a.sliver").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        assert art.save(tmp_path / "b.sliver").stat().st_mode & 0o777 == 0o600
        os.chmod(tmp_path / "a.sliver", 0o640)
        assert art.save(tmp_path / "a.sliver").stat().st_mode & 0o777 == 0o640  # replaced, mode kept
    finally:
        os.umask(old)


def test_a_live_writers_temporary_file_is_left_alone(tmp_path):
    target = tmp_path / "x.txt"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".x.txt.{sleeper.pid}.abcd.tmp"
        live.write_bytes(b"being written")
        dead = tmp_path / ".x.txt.999999999.abcd.tmp"
        dead.write_bytes(b"left by a killed writer")
        other = tmp_path / ".y.txt.999999999.abcd.tmp"
        other.write_bytes(b"another file's")
        atomic_write(target, lambda f: f.write(b"hello"))
        assert target.read_bytes() == b"hello"
        assert live.exists() and other.exists() and not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
