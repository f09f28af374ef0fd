"""Edge cases every command must handle the same way (as csvkit's test mixins do).

A command's test module subclasses :class:`CommandContract`, names the command and says how to
build a valid invocation; the mixin then checks --help, missing files and bad input files.
"""
import os

from conftest import run_cli


class CommandContract:
    command = None  # e.g. "hbt-score"

    def valid_args(self, tmp_path):
        """Arguments of a run that succeeds, writing to ``tmp_path``."""
        raise NotImplementedError

    def bad_inputs(self, tmp_path):
        """Yield ``(label, args, stdin_bytes, expected_substring)`` that must fail with exit 2."""
        return []

    def test_help_has_example(self):
        r = run_cli(self.command, "--help")
        assert r.returncode == 0, r.stderr
        assert b"Example" in r.stdout and self.command.encode() in r.stdout

    def test_valid_run_succeeds(self, tmp_path):
        r = run_cli(self.command, *self.valid_args(tmp_path))
        assert r.returncode == 0, r.stderr.decode()

    def test_missing_file_is_one_line_error(self, tmp_path):
        missing = tmp_path / "does-not-exist.jsonl"
        args = [str(missing) if a == "{MISSING}" else a for a in self.missing_file_args(tmp_path, missing)]
        r = run_cli(self.command, *args)
        assert r.returncode == 2, r.stderr.decode()
        err = r.stderr.decode().strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert "does-not-exist.jsonl" in err

    def missing_file_args(self, tmp_path, missing):
        raise NotImplementedError

    def test_bad_inputs(self, tmp_path):
        for label, args, stdin, expected in self.bad_inputs(tmp_path):
            before = set(os.listdir(tmp_path))
            r = run_cli(self.command, *args, input=stdin)
            err = r.stderr.decode().strip()
            assert r.returncode == 2, f"{label}: rc={r.returncode} {err}"
            assert "Traceback" not in err and len(err.splitlines()) == 1, f"{label}: {err}"
            assert expected in err, f"{label}: expected {expected!r} in {err!r}"
            leftovers = set(os.listdir(tmp_path)) - before
            assert not leftovers, f"{label}: left {leftovers}"
