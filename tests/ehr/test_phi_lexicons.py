"""The note de-identifier's word lists: Philter's sets read with the json parser give what tomllib gives."""

from __future__ import annotations

import tomllib

import pytest

from radplan.ehr import phi_lexicons


def test_philters_installed_set_file_reads_the_same_as_with_tomllib():
    text = (phi_lexicons._package_dir("philter_lite") / "filters" / "set.toml").read_text(encoding="utf-8")
    fast = phi_lexicons.one_line_string_arrays(text)
    assert fast == tomllib.loads(text)
    assert {name: len(words) > 90_000 for name, words in fast.items()} == {"nonames": True, "firstnames": True, "lastnames": True}


@pytest.mark.parametrize("text", [
    "names = [ 'literal' ]",             # a TOML literal string
    'names = [ "a\\U0001F600" ]',        # an escape JSON does not have
    '[table]\nnames = [ "a" ]',           # a table
    'names = [ "a" ]\nnames = [ "b" ]',  # a repeated key
    'names = [ 1, 2 ]',                  # not strings
])
def test_what_the_json_reading_cannot_take_is_refused_so_tomllib_reads_it(text):
    with pytest.raises(ValueError):
        phi_lexicons.one_line_string_arrays(text)


def test_a_trailing_comma_is_toml_and_is_read():
    assert phi_lexicons.one_line_string_arrays('names = [ "a", "b",]\n# comment\n') == {"names": ["a", "b"]}
