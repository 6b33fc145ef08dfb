"""possae.bytecode: the install compiles what the book imports, even where PYTHONDONTWRITEBYTECODE is set."""

import pytest

from possae.bytecode import compile_imports


def test_imports_write_byte_code_even_where_the_environment_forbids_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(tmp_path))  # the byte code lands here, not beside the sources
    compile_imports(first=("fractions",), groups=(("decimal",), ("possae.numbers",)))
    written = [p.relative_to(tmp_path) for p in tmp_path.rglob("*.pyc")]
    assert any(p.name.startswith("fractions.") for p in written)  # the first import
    assert any(p.name.startswith("numbers.") and "possae" in p.parts for p in written)  # each group's


def test_a_failed_import_names_itself_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(tmp_path))
    with pytest.raises(SystemExit, match=r"import possae_no_such_module.*make install"):
        compile_imports(first=("json",), groups=(("possae_no_such_module",), ("json",)))
