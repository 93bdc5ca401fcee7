"""deploy/Dockerfile's inputs exist and `make image` builds it or says in one line why not (exit 0)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from tests.unit.k8s.cases import REPO

DOCKERFILE = REPO / "deploy" / "Dockerfile"
SCRIPT = REPO / "scripts" / "image.sh"


def test_the_dockerfile_copies_files_that_exist_and_runs_pyztunnel() -> None:
    text = DOCKERFILE.read_text()
    sources = [part for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M) for part in line.split()[:-1]]
    assert sources, "the Dockerfile copies the sources"
    for source in sources:
        assert (REPO / source).exists(), source
    assert re.findall(r"^FROM (\S+)", text, re.M) == ["debian:bookworm-slim", "debian:bookworm-slim"]
    assert "-c requirements.lock" in text, "the pinned versions, as constraints"
    assert 'ENTRYPOINT ["pyztunnel"]' in text and 'CMD ["proxy", "ztunnel"]' in text
    assert not re.search(r"iproute2|nftables", text.split("FROM debian:bookworm-slim\n")[-1]), "the proxy needs neither"
    ignore = (REPO / "deploy" / "Dockerfile.dockerignore").read_text()
    assert all(f"!{source.rstrip('/')}" in ignore.replace("/\n", "\n") for source in sources)


def _run(env_path: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": env_path}
    bash = shutil.which("bash")  # found on our PATH, not the test's
    assert bash is not None
    return subprocess.run([bash, str(SCRIPT)], capture_output=True, text=True, timeout=120, env=env)


def test_without_a_running_engine_it_says_one_line_and_exits_0(tmp_path: Path) -> None:
    """A docker client whose daemon is not there (as on this machine) is not a builder."""
    fake = tmp_path / "docker"
    fake.write_text(
        "#!/bin/sh\necho 'Cannot connect to the Docker daemon at unix:///var/run/docker.sock.' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    out = _run(f"{tmp_path}:/usr/bin:/bin")
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1 and out.stderr == ""
    assert "no container builder runs here" in out.stdout and "Cannot connect to the Docker daemon" in out.stdout


def test_without_any_builder_it_says_so(tmp_path: Path) -> None:
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("sed", "grep", "tail", "timeout", "dirname"):  # what the script uses, and no builder
        (tools / name).symlink_to(str(shutil.which(name)))
    out = _run(str(tools))
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout
        == "make image: no container builder runs here (none of docker, podman, buildah is installed); nothing built\n"
    )


def test_make_image_here() -> None:
    """On this machine: a build where an engine runs (checked by --probe only, a build is minutes), else the line."""
    probe = subprocess.run(["bash", str(SCRIPT), "--probe"], capture_output=True, text=True, timeout=120)
    assert probe.returncode == 0 and probe.stdout.count("\n") == 1
    if "would build" in probe.stdout:
        return
    out = subprocess.run(["make", "-s", "image"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.count("\n") == 1 and "nothing built" in out.stdout
