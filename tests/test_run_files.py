"""The files of a run: atomic writes that survive kills, full disks and long names; one process
per run folder (its lock); resuming cleans what a killed write left; damaged files are one-line
errors naming them."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r1kit import checkpoint as ckpt
from r1kit.cli import main as cli
from r1kit.config import DistillConfig, PipelineConfig, SampleConfig, ZeroConfig, load_config
from r1kit.errors import UserError
from r1kit.filters import build_filters
from r1kit.models import load_model
from r1kit.runs import RunFolder

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "r1kit" / "assets" / "tiny-base"


class Killed(BaseException):
    """A SIGKILL at that point: nothing after it runs, no handler cleans up."""


def _zero_cfg(out: Path, name: str = "run") -> ZeroConfig:
    return load_config(ZeroConfig, None, [f"run.out_dir={out}", f"run.name={name}"])


def _checkpoint(run: Path, step: int, marker: str) -> Path:
    folder = run / "checkpoints" / f"step-{step:06d}"
    folder.mkdir(parents=True)
    torch.save({"marker": marker}, folder / "trainer_state.pt")
    ckpt.atomic_write_text(run / "checkpoints" / "latest", folder.name)
    return folder


def _kill_at_replace(monkeypatch, n: int) -> None:
    """`os.replace` dies on its `n`-th call."""
    real, calls = os.replace, {"n": 0}

    def replace(a, b):
        calls["n"] += 1
        if calls["n"] == n:
            raise Killed
        return real(a, b)

    monkeypatch.setattr(os, "replace", replace)


# ------------------------------------------------------------------------------- atomic writes


def test_a_kill_between_the_renames_of_a_resave_loses_neither_folder(tmp_path, monkeypatch):
    run = tmp_path / "run"
    target = _checkpoint(run, 4, "first")
    _kill_at_replace(monkeypatch, 2)  # 1: step-000004 -> .step-000004.old, 2: the new one in
    with pytest.raises(Killed), ckpt.atomic_dir(target) as tmp:
        torch.save({"marker": "again"}, tmp / "trainer_state.pt")
    monkeypatch.undo()
    assert not target.exists()  # what the kill left: `latest` names a folder that is gone
    found = ckpt.latest_checkpoint(run)  # put back on resume
    assert found == target and ckpt.load_trainer_state(found) == {"marker": "first"}
    names = sorted(p.name for p in target.parent.iterdir())
    assert names[1:] == ["latest", "step-000004"] and names[0].startswith(".step-000004.tmp-")


def test_resume_puts_back_a_replaced_folder_and_removes_temporaries(tmp_path, monkeypatch):
    run = RunFolder.open(_zero_cfg(tmp_path), "zero").path
    _checkpoint(run, 2, "kept")
    final = run / "final"
    final.mkdir()
    (final / "config.json").write_text("{}")
    _kill_at_replace(monkeypatch, 2)
    with pytest.raises(Killed), ckpt.atomic_dir(final) as tmp:
        (tmp / "config.json").write_text('{"new": 1}')
    monkeypatch.undo()
    leftovers = [run / ".metrics.jsonl.tmp-abcd1234", run / "checkpoints" / ".latest.x1y2z3w4",
                 run / "samples" / ".eval-base.jsonl.tmp-0_a1b2c3"]
    for path in leftovers:
        path.parent.mkdir(exist_ok=True)
        path.write_text("partial")
    (run / "checkpoints" / ".step-000004.tmp-abcdefgh").mkdir()
    kept = [run / "notes.txt", run / ".hidden", run / "samples" / ".x.tmp-short"]
    for path in kept:
        path.write_text("mine")
    stage = run / "01-zero"  # a nested run folder (a pipeline's stage) cleans its own
    stage.mkdir()
    (stage / "config.yaml").write_text("run: {}\n")
    (stage / ".summary.json.tmp-abcd1234").write_text("partial")

    RunFolder.open(_zero_cfg(tmp_path), "zero", resume=str(run))
    assert (final / "config.json").read_text() == "{}"
    assert not any(p.exists() for p in leftovers)
    assert not (run / "checkpoints" / ".step-000004.tmp-abcdefgh").exists()
    assert all(p.exists() for p in kept) and (stage / ".summary.json.tmp-abcd1234").exists()
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".")) == [
        ".hidden", ".lock"]


def test_the_next_checkpoint_does_not_delete_a_replaced_one(tmp_path, monkeypatch):
    run = tmp_path / "run"
    target = _checkpoint(run, 4, "first")
    _kill_at_replace(monkeypatch, 2)
    with pytest.raises(Killed), ckpt.atomic_dir(target) as tmp:
        torch.save({}, tmp / "trainer_state.pt")
    monkeypatch.undo()
    model, tok = load_model(str(TINY))
    ckpt.save_checkpoint(run, 6, model, tok, {"marker": "later"}, keep=2)
    assert ckpt.load_trainer_state(target) == {"marker": "first"}


def test_long_names_fit_the_file_name_limit(tmp_path):
    name = "m" * 245  # export OUT: a temporary name of NAME + 14 characters would not fit
    with ckpt.atomic_dir(tmp_path / name) as tmp:
        (tmp / "config.json").write_text("{}")
    with ckpt.atomic_dir(tmp_path / name) as tmp:  # replacing it: the `.old` name fits too
        (tmp / "config.json").write_text("{}")
    ckpt.atomic_write_text(tmp_path / (name + ".json"), "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [name, name + ".json"]


def test_a_failed_write_leaves_no_temporary_file(tmp_path):
    """`ulimit -f`: the file size limit stops the write (EFBIG)."""
    code = (f"import resource, sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "from r1kit.checkpoint import atomic_write_text\n"
            "resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))\n"
            f"atomic_write_text({str(tmp_path / 'big.txt')!r}, 'x' * 100000)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 1
    assert "UserError: " in done.stderr
    assert "big.txt: could not write (File too large)\n" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_while_checkpointing_is_one_line_naming_the_folder(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _checkpoint(run, 2, "kept")

    def full(obj, f, *a, **k):
        Path(f).write_bytes(b"PK\x03\x04partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 3949632 "
                           "vs 3949520")

    monkeypatch.setattr(torch, "save", full)
    model, tok = load_model(str(TINY))
    with pytest.raises(UserError, match=r"step-000004: could not write \(\[enforce fail.*"
                                        r"the disk may be full"):
        ckpt.save_checkpoint(run, 4, model, tok, {})
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step-000002"]
    # anything else that goes wrong inside is not taken for a full disk
    with pytest.raises(ValueError, match="a bug"), ckpt.atomic_dir(tmp_path / "x"):
        raise ValueError("a bug")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_saved_model_files_follow_the_umask(tmp_path):
    mask = os.umask(0o022)
    try:
        model, tok = load_model(str(TINY))
        ckpt.save_hf_folder(model, tok, tmp_path / "out")
        ckpt.save_checkpoint(tmp_path / "run", 1, model, tok, {})
    finally:
        os.umask(mask)
    for folder in (tmp_path / "out", tmp_path / "run" / "checkpoints" / "step-000001"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
        assert modes["model.safetensors"] == 0o644 and set(modes.values()) == {0o644}, modes


# ------------------------------------------------------------------------------- damaged files


def test_damaged_checkpoint_and_weights_are_one_line_errors(tmp_path):
    run = tmp_path / "run"
    folder = _checkpoint(run, 2, "x")
    data = (folder / "trainer_state.pt").read_bytes()
    (folder / "trainer_state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"trainer_state.pt: damaged or truncated"):
        ckpt.load_trainer_state(folder)
    (folder / "trainer_state.pt").write_bytes(b"")
    with pytest.raises(UserError, match=r"trainer_state.pt: damaged or truncated"):
        ckpt.load_trainer_state(folder)

    model = tmp_path / "model"
    shutil.copytree(TINY, model)
    weights = (model / "model.safetensors").read_bytes()
    for cut in (weights[: len(weights) // 2], b""):
        (model / "model.safetensors").write_bytes(cut)
        with pytest.raises(UserError, match=r"model: could not load model: its weights are "
                                            "damaged or truncated"):
            load_model(str(model))


def test_sample_progress_missing_keys_is_an_error_naming_it(tmp_path):
    from r1kit.stages.sample import _load_progress

    chain = build_filters([])
    run = RunFolder(tmp_path, load_config(SampleConfig), resumed=True)
    (tmp_path / "progress.json").write_text('{"batches_done": 1, "tally": {}}')
    with pytest.raises(UserError, match=r"progress.json: not the progress of this sampling run "
                                        r"\('rows' is missing"):
        _load_progress(run, chain)
    (tmp_path / "progress.json").write_text('{"batches_done": 1, "rows": 2, "tally": '
                                            '{"prompts": 3, "rejected": {}}}')
    with pytest.raises(UserError, match=r"no tally.generated, .*tally.rejected.duplicate"):
        _load_progress(run, chain)


# ------------------------------------------------------------------------------- run folders


def _hold(folder: Path) -> subprocess.Popen:
    """Another r1kit process holding `folder` (as a run resumed in it does)."""
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
            "from r1kit.runs import lock_folder\n"
            f"held = lock_folder({str(folder)!r}); print('held', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_run_folder_is_used_by_one_process_at_a_time(tmp_path):
    held = RunFolder.open(_zero_cfg(tmp_path), "zero")
    run = held.path
    again = RunFolder.open(_zero_cfg(tmp_path), "zero", resume=str(run))  # this process: again
    assert again.lock is held.lock
    del held, again  # a stage called from Python returned: the folder is free
    proc = _hold(run)
    try:
        with pytest.raises(UserError, match=rf"run is in use by another r1kit process "
                                            rf"\(pid {proc.pid}\)"):
            RunFolder.open(_zero_cfg(tmp_path), "zero", resume=str(run))
        (tmp_path / "new").mkdir()  # a new run whose folder another start has just made
        other = _hold(tmp_path / "new")
        try:
            with pytest.raises(UserError, match="new is in use by another r1kit process"):
                RunFolder.open(_zero_cfg(tmp_path, "new"), "zero")
        finally:
            other.kill()
            other.wait()
    finally:
        proc.kill()
        proc.wait()
    RunFolder.open(_zero_cfg(tmp_path), "zero", resume=str(run))  # free once it ended
    assert RunFolder.open(_zero_cfg(tmp_path, "new"), "zero").path == tmp_path / "new"


def test_two_resumes_at_once_one_is_refused(tmp_path):
    """The CLI, as a user runs it twice: the second stops at once with one line."""
    run = RunFolder.open(_zero_cfg(tmp_path), "zero").path
    proc = _hold(run)
    try:
        done = subprocess.run([sys.executable, "-m", "r1kit", "zero", "--resume", str(run)],
                              capture_output=True, text=True, cwd=ROOT, check=False,
                              timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        (f"r1kit zero: error: {run} is in use by another r1kit process (pid {proc.pid}); wait "
         "for it to end, or stop it")]


def test_a_new_run_refuses_a_folder_holding_other_files(tmp_path):
    taken = tmp_path / "run"
    taken.mkdir()
    (taken / "metrics.jsonl").write_text('{"step": 1}\n')
    with pytest.raises(UserError, match="holds files that are not a run's .no config.yaml."):
        RunFolder.open(_zero_cfg(tmp_path), "zero")
    assert (taken / "metrics.jsonl").read_text() == '{"step": 1}\n'
    (taken / "metrics.jsonl").unlink()
    (taken / ".lock").write_text("123\n")  # a start killed before its config.yaml: taken over,
    (taken / ".config.yaml.tmp-ab12cd34").write_text("run: {")  # even half-way through writing it
    assert RunFolder.open(_zero_cfg(tmp_path), "zero").path == taken
    assert not (taken / ".config.yaml.tmp-ab12cd34").exists()
    with pytest.raises(UserError, match="already exists; resume it"):
        RunFolder.open(_zero_cfg(tmp_path), "zero")
    # names made from the time: the next free one, each made by one start only
    cfg = load_config(ZeroConfig, None, [f"run.out_dir={tmp_path}"])
    first, second = RunFolder.open(cfg, "zero").path, RunFolder.open(cfg, "zero").path
    assert first != second and first.is_dir() and second.is_dir()


def test_an_unwritable_output_folder_is_one_line(tmp_path, monkeypatch, capsys):
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    run = RunFolder.open(_zero_cfg(tmp_path, "done"), "zero").path
    (run / "metrics.jsonl").write_text('{"step": 1, "reward/total": 0.5}\n')
    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(UserError, match=r"ro/run: cannot make the run folder \(Read-only file "):
        RunFolder.open(_zero_cfg(tmp_path / "ro"), "zero")
    monkeypatch.undo()
    monkeypatch.setattr(ckpt.tempfile, "mkstemp", read_only)
    assert cli(["report", str(run)]) == 2  # asked for: an error (at the end of a run: a warning)
    err = capsys.readouterr().err
    assert err.strip() == (f"r1kit report: error: {run / 'report.html'}: could not write "
                           "(Read-only file system)")
    monkeypatch.setattr(ckpt.tempfile, "mkdtemp", read_only)
    with pytest.raises(UserError, match=r"out: could not write \(Read-only file system\)"):
        ckpt.save_hf_folder(None, None, tmp_path / "out")


def test_any_other_file_system_error_is_one_line(monkeypatch, capsys):
    from r1kit.stages import export, zero

    def fails(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", "/ro/x")

    monkeypatch.setattr(zero, "main", fails)
    monkeypatch.setattr(export, "main", fails)
    assert cli(["zero"]) == 2
    assert cli(["export", "a", "b"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"r1kit {s}: error: [Errno 30] Read-only file system: '/ro/x'"
                   for s in ("zero", "export")]


# ------------------------------------------------------------------------------- manifests


def test_distill_and_pipeline_killed_before_their_manifest_resume(tmp_path, monkeypatch):
    """Killed between config.yaml and manifest.json: `--resume` starts the work, not an error."""
    from r1kit.stages import distill, pipeline

    class Reached(Exception):
        pass

    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr(distill, "run_stage", reached)
    monkeypatch.setattr(pipeline, "run_stage", reached)
    cfg = load_config(DistillConfig, None, [f"run.out_dir={tmp_path}", "run.name=d",
                                            f"distill.teacher={TINY}"])
    folder = RunFolder.open(cfg, "distill").path
    with pytest.raises(Reached):
        distill.main(cfg, resume=str(folder))
    assert (folder / "manifest.json").is_file()

    cfg = load_config(PipelineConfig, None, [f"run.out_dir={tmp_path}", "run.name=p"])
    folder = RunFolder.open(cfg, "pipeline").path
    with pytest.raises(Reached):
        pipeline.main(cfg, resume=str(folder))
    assert (folder / "manifest.json").is_file()


def test_a_pipeline_resumes_a_stage_folder_in_place_never_from_under_another_process(tmp_path):
    """A stage killed before its first checkpoint is resumed (it starts over in its folder, under
    its lock); the folder is not removed while another process works in it."""
    from r1kit.stages import pipeline

    stage = RunFolder.open(_zero_cfg(tmp_path, "01-zero"), "zero").path
    (stage / "metrics.jsonl").write_text('{"step": 1}\n')
    proc = _hold(stage)
    try:
        with pytest.raises(UserError, match="01-zero is in use by another r1kit process"):
            pipeline.run_stage("01-zero", "zero", _zero_cfg(tmp_path, "01-zero"), stage)
    finally:
        proc.kill()
        proc.wait()
    assert (stage / "metrics.jsonl").read_text() == '{"step": 1}\n'  # untouched


def test_the_launcher_exits_as_a_shell_does_when_torchrun_is_killed(monkeypatch):
    from r1kit import distributed

    class Killed:
        def wait(self):
            return -9  # SIGKILL

    monkeypatch.setattr(distributed.subprocess, "Popen", lambda cmd: Killed())
    assert distributed.launch(2, ["zero"]) == 137

