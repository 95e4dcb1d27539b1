"""Packaging: the license metadata, the manylinux build configuration, and a stripped extension."""
import pathlib
import struct

import pytest

from fastconv import _C

REPO = pathlib.Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the checks below read pyproject.toml


def pyproject():
    with open(REPO / "pyproject.toml", "rb") as file:
        return tomllib.load(file)


def test_license_is_an_spdx_expression_with_its_file():
    project = pyproject()["project"]
    assert project["license"] == "MIT"  # PEP 639; the {text = ...} table is deprecated
    assert project["license-files"] == ["LICENSE"]
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")
    requires = pyproject()["build-system"]["requires"]
    assert "setuptools>=77" in requires  # the first setuptools that reads SPDX license strings


def test_cibuildwheel_builds_manylinux2014_wheels_and_checks_them():
    config = pyproject()["tool"]["cibuildwheel"]
    assert config["manylinux-x86_64-image"] == "manylinux2014"  # glibc 2.17
    assert "cp39-*" in config["build"] and "cp313-*" in config["build"]
    assert "import fastconv" in config["test-command"]
    assert config["environment"] == {"FASTCONV_RECORD_CHECKOUT": "0"}  # no path of the build machine inside


def elf_section_names(path):
    data = pathlib.Path(path).read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1  # 64-bit little-endian
    section_offset, = struct.unpack_from("<Q", data, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", data, 0x3A)

    def header(index):
        base = section_offset + index * entry_size
        name, = struct.unpack_from("<I", data, base)
        offset, size = struct.unpack_from("<QQ", data, base + 0x18)
        return name, offset, size

    _, names_offset, names_size = header(names_index)
    names = data[names_offset:names_offset + names_size]
    return {names[name:names.index(b"\0", name)].decode() for name, _, _ in map(header, range(count))}


def test_the_extension_is_stripped():
    sections = elf_section_names(_C.__file__)
    assert ".dynsym" in sections and ".text" in sections  # the parse found the real sections
    assert ".symtab" not in sections
    assert not any(name.startswith(".debug") for name in sections)
