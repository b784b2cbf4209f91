"""The CI recipes in examples/ci run on the lab: their shell lines, read from the recipe files
themselves (a Jenkinsfile's `sh '''...'''` blocks, GitLab's jobs' `script`, GitHub's steps'
`run`), in order, each block as its CI server runs it (bash, stopping at the first failing
command), with the lab's environment and the VERSION the CI server would set. The CI servers
are not needed: what they add (JUnit publishing, artifacts) is checked by the paths the
recipes name matching the reports the run wrote."""

from __future__ import annotations

import glob
import json
import re
import subprocess
import textwrap
import time
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT

RECIPES = ROOT / "examples" / "ci"


def jenkins(text: str) -> tuple[list[str], list[str]]:
    """(shell blocks, report globs) of a declarative Jenkinsfile."""
    blocks = [textwrap.dedent(b) for b in re.findall(r"\bsh\s+'''(.*?)'''", text, re.S)]
    globs = re.findall(r"\b(?:testResults|artifacts):\s*'([^']+)'", text)
    assert re.search(r"environment\s*\{[^}]*\bVERSION\s*=", text)
    return blocks, globs


def gitlab(text: str) -> tuple[list[str], list[str]]:
    """(one block per job, in stage order; report globs) of a .gitlab-ci.yml."""
    doc = yaml.safe_load(text)
    jobs = [
        (doc["stages"].index(job["stage"]), name, job)
        for name, job in doc.items()
        if isinstance(job, dict) and "script" in job
    ]
    blocks, globs = [], []
    for _, _, job in sorted(jobs, key=lambda j: j[0]):
        blocks.append("\n".join(job["script"]))  # one shell per job, as the runner does
        globs += job["artifacts"]["paths"] + [job["artifacts"]["reports"]["junit"]]
    assert "VERSION" in doc["variables"]
    return blocks, globs


def github(text: str) -> tuple[list[str], list[str]]:
    """(one block per `run:` step, report globs) of a GitHub Actions workflow."""
    doc = yaml.safe_load(text)
    blocks, globs = [], []
    for job in doc["jobs"].values():
        assert "VERSION" in job["env"]
        for step in job["steps"]:
            if "run" in step:
                blocks.append(step["run"])
            for key in ("report_paths", "path"):
                if key in step.get("with", {}):
                    globs.append(step["with"][key])
    return blocks, globs


READERS = {"Jenkinsfile": jenkins, "gitlab-ci.yml": gitlab, "github-actions.yml": github}


def run_blocks(lab, blocks: list[str], version: str) -> subprocess.CompletedProcess:
    """The blocks in order, each in its own bash with errexit and pipefail (as Jenkins' sh,
    GitLab's runner and GitHub's `bash -e` run them); the first that fails ends the job."""
    for block in blocks:
        proc = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", block],
            cwd=ROOT,
            # The recipes publish the project's reports/ (REPORTS_DIR's default).
            env={
                **{k: v for k, v in lab.env.items() if k != "CDTASKS_REPORTS_DIR"},
                "VERSION": version,
            },
            text=True,
            capture_output=True,
            timeout=900,
        )
        if proc.returncode != 0:
            return proc
    return proc


def test_every_recipe_is_read(stack):
    assert sorted(p.name for p in RECIPES.iterdir()) == sorted(READERS)
    for name, read in READERS.items():
        blocks, globs = read((RECIPES / name).read_text())
        text = "\n".join(blocks)
        assert "inv deliver" in text and "inv deploy" in text, name
        assert any(g.endswith(".junit.xml") for g in globs), name
        assert any(g.endswith(".json") for g in globs), name


@pytest.mark.parametrize("name", list(READERS))
def test_a_recipe_delivers_and_deploys_on_the_lab(stack, name):
    blocks, globs = READERS[name]((RECIPES / name).read_text())
    version = f"ci-{name.split('-')[0].split('.')[0].lower()}-{uuid.uuid4().hex[:4]}"
    started = time.time()
    proc = run_blocks(stack, blocks, version)
    assert proc.returncode == 0, (
        f"{name}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    )
    # What the CI server publishes and keeps: the recipe's paths match this run's reports.
    written = {
        Path(p)
        for g in globs
        for p in glob.glob(str(ROOT / g))
        if Path(p).stat().st_mtime >= started
    }
    assert {"deliver.junit.xml", "deploy.junit.xml", "deliver.json", "deploy.json"} <= {
        p.name for p in written
    }, globs
    for junit in (p for p in written if p.name.endswith(".junit.xml")):
        suite = ET.parse(junit).getroot()
        assert suite.tag in ("testsuite", "testsuites") and suite.get("failures") in ("0", None)
    assert json.loads((ROOT / "reports" / "deliver.json").read_text())["meta"]["version"] == version
    deployed = json.loads((ROOT / "reports" / "deploy.json").read_text())["meta"]
    assert (deployed["version"], deployed["result"]) == (version, "deployed")


def test_a_recipe_passes_a_refusal_on_as_its_exit_code(stack):
    """Jenkins' deploy stage with a version that never passed prod-like: exit 2, said."""
    blocks, _ = jenkins((RECIPES / "Jenkinsfile").read_text())
    deploy = next(b for b in blocks if "inv deploy" in b)
    proc = run_blocks(stack, [deploy], f"never-{uuid.uuid4().hex[:4]}")
    assert proc.returncode == 2, proc
    assert "inv deploy exited 2" in proc.stdout
