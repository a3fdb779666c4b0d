"""The code identities a workflow publishes to its jobs (issue 19, item 4: start-up per job): a job takes the
identity computed at DAG parse only while no package source changed since, and it equals the computed one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from diffusability import code_identity as ci

READ = "from diffusability.code_identity import command_identity; print(command_identity('trajectory-metrics'))"


def _identity_in_a_fresh_process(environment: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k != ci.ENVIRONMENT} | environment
    return subprocess.run([sys.executable, "-c", READ], env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


def test_a_published_identity_is_used_only_under_the_current_source_signature(monkeypatch):
    monkeypatch.setenv(ci.ENVIRONMENT, json.dumps({"signature": ci.source_signature(),
                                                   "identities": {"trajectory-metrics": "published0000000"}}))
    assert ci._published_identity("trajectory-metrics") == "published0000000"
    assert ci._published_identity("sample") is None                       # not published: computed
    monkeypatch.setenv(ci.ENVIRONMENT, json.dumps({"signature": "0" * 64,    # the sources changed since
                                                   "identities": {"trajectory-metrics": "published0000000"}}))
    assert ci._published_identity("trajectory-metrics") is None
    for garbage in ("", "not json", "[1, 2]", '{"signature": 1}', json.dumps({"signature": ci.source_signature(),
                                                                            "identities": {"trajectory-metrics": 5}})):
        monkeypatch.setenv(ci.ENVIRONMENT, garbage)
        assert ci._published_identity("trajectory-metrics") is None, garbage


def test_a_job_inherits_the_published_identity_and_it_equals_the_computed_one(monkeypatch):
    monkeypatch.delenv(ci.ENVIRONMENT, raising=False)
    ci.publish_identity("trajectory-metrics")
    ci.publish_identity("sample")
    published = json.loads(os.environ[ci.ENVIRONMENT])
    assert set(published["identities"]) == {"trajectory-metrics", "sample"}
    computed = _identity_in_a_fresh_process({})
    assert published["identities"]["trajectory-metrics"] == computed
    assert _identity_in_a_fresh_process({ci.ENVIRONMENT: os.environ[ci.ENVIRONMENT]}) == computed
    # a stand-in value proves the job took the published entry instead of computing its own
    fake = json.dumps({**published, "identities": {"trajectory-metrics": "f" * 16}})
    assert _identity_in_a_fresh_process({ci.ENVIRONMENT: fake}) == "f" * 16


def test_the_source_signature_follows_a_file_edit(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "b.py").write_text("y = 2\n")
    monkeypatch.setattr(ci, "ROOT", package)
    before = ci.source_signature()
    assert ci.source_signature() == before
    os.utime(package / "sub" / "b.py", ns=(1, 1))
    assert ci.source_signature() != before
