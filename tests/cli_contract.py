"""Edge cases every command must handle the same way (as csvkit's test mixins do).

A command's test module subclasses :class:`CommandContract`, names the command and says how to
build a valid invocation; the mixin then checks --help, missing files and bad input files.
"""
import os
import shutil

import orjson

from conftest import run_cli
from tiny_models import make_tiny_model


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
        """Every case: exit 2, one line naming what was expected, no traceback, no leftovers.
        All cases run; the failures are reported together."""
        failures = []
        for label, args, stdin, expected in self.bad_inputs(tmp_path):
            before = set(os.listdir(tmp_path))
            r = run_cli(self.command, *args, input=stdin)
            err = r.stderr.decode().strip()
            print(f"{self.command} | {label} | {err}")  # the table, shown by pytest -rP
            leftovers = set(os.listdir(tmp_path)) - before
            if r.returncode != 2:
                failures.append(f"{label}: exit {r.returncode}: {err}")
            elif "Traceback" in err or len(err.splitlines()) != 1:
                failures.append(f"{label}: not one line: {err}")
            elif expected not in err:
                failures.append(f"{label}: expected {expected!r} in {err!r}")
            elif leftovers:
                failures.append(f"{label}: left {sorted(leftovers)}")
        assert not failures, "\n".join(failures)


# ---------------------------------------------------------------- shared bad-input cases
#
# Each generator makes the same cases for every command that reads one kind of input, so one
# kind of bad input is checked identically everywhere. A command's ``bad_inputs`` yields from
# them with ``args_for(path) -> [command arguments reading path]`` (its output under tmp_path).
# Expected text is the location the message must name: "FILE:LINE: field 'F'".

def _field_label(path):
    """``("items", 0, "query_lang")`` -> ``items[0].query_lang``."""
    label = str(path[0])
    for part in path[1:]:
        label += f"[{part}]" if isinstance(part, int) else f".{part}"
    return label


def _changed(row, path, value):
    """A deep copy of ``row`` with the field at ``path`` set to ``value`` (removed if ...)."""
    row = orjson.loads(orjson.dumps(row))
    holder = row
    for part in path[:-1]:
        holder = holder[part]
    if value is ...:
        del holder[path[-1]]
    else:
        holder[path[-1]] = value
    return row


def jsonl_cases(tmp_path, name, rows, args_for, required, id_field=None, duplicate_field=None,
                lang_field=None):
    """Bad JSONL files for a command reading ``rows``-like lines (two valid, distinct rows).

    ``required``, ``lang_field``: a field path such as ``("text",)`` or ``("items", 0, "query")``;
    ``id_field``: the field that must be unique (``duplicate_field``: the field the duplicate
    error names, if not the id itself).
    """
    folder = tmp_path / f"{name}-cases"
    folder.mkdir(exist_ok=True)
    first, second = (orjson.dumps(row) for row in rows[:2])

    def case(label, content, expected):
        path = folder / f"{label}.jsonl"
        path.write_bytes(content)
        return f"{name}: {label}", args_for(path), None, f"{label}.jsonl{expected}"

    yield case("invalid-json", first + b"\n{\"a\": 1,\n", ":2: invalid JSON")
    yield case("not-an-object", first + b"\n[1, 2]\n", ":2: expected a JSON object")
    yield case("empty", b"", ": empty input")
    yield case("blank-lines-only", b"\n \n\t\n", ": empty input")
    label = _field_label(required)
    yield case("missing-field", first + b"\n" + orjson.dumps(_changed(rows[1], required, ...)),
               f":2: field '{label}': missing")
    yield case("mistyped-field", first + b"\n" + orjson.dumps(_changed(rows[1], required, 7)),
               f":2: field '{label}': expected")
    non_utf8 = second.replace(b'":"', b'":"\xff', 1)
    yield case("non-utf8", first + b"\n" + non_utf8 + b"\n", ":2: not valid UTF-8")
    yield case("utf16", (first + b"\n").decode().encode("utf-16"), ":1: ")
    if id_field is not None:
        yield case("duplicate-id", first + b"\n" + second + b"\n" + first + b"\n",
                   f":3: field '{duplicate_field or id_field}'")
    if lang_field is not None:
        label = _field_label(lang_field)
        yield case("lang-not-a-string", first + b"\n" + orjson.dumps(_changed(rows[1], lang_field, ["de"])),
                   f":2: field '{label}': expected a string")
        yield case("lang-empty", first + b"\n" + orjson.dumps(_changed(rows[1], lang_field, "")),
                   f":2: field '{label}': empty")


def npy_cases(tmp_path, name, args_for, rows=6, dim=4):
    """Bad NAME.npy + NAME.ids.jsonl pairs, as every embeddings reader must refuse them."""
    import numpy as np

    from hbt_tools.io import save_embeddings

    folder = tmp_path / f"{name}-cases"
    folder.mkdir(exist_ok=True)
    matrix = np.random.default_rng(0).standard_normal((rows, dim)).astype(np.float32)
    ids = [{"id": f"x{i}", "lang": "en"} for i in range(rows)]

    def case(label, expected, emb=matrix, side=ids, sidecar_bytes=None, npy_bytes=None):
        npy = folder / f"{label}.npy"
        save_embeddings(npy, matrix, side)
        if npy_bytes is not None:
            npy.write_bytes(npy_bytes)
        else:
            np.save(npy, emb, allow_pickle=True)
        if sidecar_bytes is not None:
            (folder / f"{label}.ids.jsonl").write_bytes(sidecar_bytes)
        return f"{name}: {label}", args_for(npy), None, expected.replace("NAME", label)

    yield case("rows-differ", f"NAME.ids.jsonl: {rows - 1} rows in", emb=matrix[:-1])
    nan, inf = matrix.copy(), matrix.copy()
    nan[2, 1], inf[4, 0] = np.nan, -np.inf
    yield case("nan", "NAME.npy: row 2 (id 'x2') holds NaN or inf", emb=nan)
    yield case("inf", "NAME.npy: row 4 (id 'x4') holds NaN or inf", emb=inf)
    yield case("one-dimensional", "NAME.npy: expected a 2-d array", emb=matrix[0])
    yield case("integers", "NAME.npy: expected float32 or float16", emb=matrix.astype(np.int32))
    yield case("pickled-objects", "NAME.npy: not a .npy array",
               emb=np.array([[object()]] * rows, dtype=object))
    yield case("not-npy", "NAME.npy: not a .npy file", npy_bytes=b"x0 0.1 0.2\n")
    yield case("duplicate-id", "NAME.ids.jsonl:4: field 'id': duplicate id 'x1'",
               side=ids[:3] + [ids[1]] + ids[4:])
    yield case("sidecar-invalid-json", "NAME.ids.jsonl:2: invalid JSON",
               sidecar_bytes=b'{"id": "x0"}\n{"id": \n')
    yield case("sidecar-missing-id", "NAME.ids.jsonl:1: field 'id': missing",
               sidecar_bytes=b'{"lang": "en"}\n' * rows)
    yield case("sidecar-lang-not-a-string", "NAME.ids.jsonl:1: field 'lang': expected a string",
               side=[{"id": r["id"], "lang": 5} for r in ids])
    yield case("sidecar-lang-empty", "NAME.ids.jsonl:1: field 'lang': empty",
               side=[{"id": r["id"], "lang": ""} for r in ids])
    yield case("sidecar-non-utf8", "NAME.ids.jsonl:2: not valid UTF-8",
               sidecar_bytes=b'{"id": "x0"}\n{"id": "\xff"}\n')
    lonely = folder / "no-sidecar.npy"
    np.save(lonely, matrix)
    yield f"{name}: no-sidecar", args_for(lonely), None, "no-sidecar.ids.jsonl: no such file"


def run_cases(tmp_path, name, args_for):
    """Bad TREC run files (6 columns, or 3)."""
    good = b"q1 Q0 a 1 2.0 t\n"
    yield from _text_cases(tmp_path, name, args_for, {
        "five-columns": (good + b"q1 Q0 b 2 1.0\n", ":2: expected 6 columns"),
        "four-columns": (good + b"q1 Q0 b 1.0\n", ":2: expected 6 columns"),
        "score-not-a-number": (good + b"q1 Q0 b 2 high t\n", ":2: field 'score'"),
        "score-nan": (good + b"q1\tb\tnan\n", ":2: field 'score': score is NaN"),
        "duplicate-docid": (good + b"q1 Q0 a 2 1.0 t\n", ":2: field 'docid'"),
        "empty": (b"\n\n", ": empty run"),
        "non-utf8": (good + b"q1 Q0 \xff 2 1.0 t\n", ":2: not valid UTF-8"),
    })


def qrels_cases(tmp_path, name, args_for):
    """Bad TREC qrels files (``qid iter docid rel``)."""
    good = b"q1 0 a 1\n"
    yield from _text_cases(tmp_path, name, args_for, {
        "three-columns": (good + b"q1 0 b\n", ":2: expected 4 columns"),
        "five-columns": (good + b"q1 0 b 1 x\n", ":2: expected 4 columns"),
        "rel-not-a-number": (good + b"q1 0 b yes\n", ":2: field 'rel'"),
        "empty": (b"", ": empty qrels"),
        "non-utf8": (good + b"q1 0 \xff 1\n", ":2: not valid UTF-8"),
    })


def _text_cases(tmp_path, name, args_for, cases):
    folder = tmp_path / f"{name}-cases"
    folder.mkdir(exist_ok=True)
    for label, (content, expected) in cases.items():
        path = folder / label
        path.write_bytes(content)
        yield f"{name}: {label}", args_for(path), None, f"{label}{expected}"


def model_cases(tmp_path, args_for):
    """Folders that are not a model; the message must name the folder."""
    folder = tmp_path / "model-cases"
    folder.mkdir(exist_ok=True)
    contents = {
        "empty-folder": {},
        "readme-only": {"README.md": "hello"},
        "config-only": {"config.json": '{"model_type": "bert"}'},
        "config-not-json": {"config.json": "{model_type: bert"},
        "unknown-model-type": {"config.json": '{"model_type": "no-such-architecture"}',
                               "model.safetensors": ""},
        "truncated-weights": {"config.json": '{"model_type": "bert", "hidden_size": 32, '
                                             '"num_hidden_layers": 1, "num_attention_heads": 2, '
                                             '"intermediate_size": 64, "vocab_size": 50}',
                              "model.safetensors": "\x00\x01 not safetensors"},
    }
    for label, files in contents.items():
        model = folder / label
        model.mkdir(exist_ok=True)
        for file_name, text in files.items():
            (model / file_name).write_text(text)
        yield f"model: {label}", args_for(model), None, f"{label}: cannot load a model"
    # a real model whose tokenizer files are broken (hbt-encode reads them in a worker process)
    for broken in ("tokenizer.json", "tokenizer_config.json"):
        label = f"broken-{broken.replace('.', '-')}"
        model = folder / label
        if not model.exists():
            shutil.copytree(make_tiny_model(folder, "xlm-roberta"), model)
            (model / broken).write_text('{"truncated": ')
        yield f"model: {label}", args_for(model), None, f"{label}: cannot load a model"
    yield "model: a file", args_for(folder / "readme-only" / "README.md"), None, \
        "README.md: cannot load a model"
    # a path, not a hub name: refused at once rather than asked of the hub (with retries)
    yield "model: no such folder", args_for(folder / "no-such-model"), None, \
        "no-such-model: cannot load a model from here (no such folder)"
