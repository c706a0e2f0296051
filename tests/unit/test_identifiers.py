import pytest

from ansible_collections.ner11.ops.plugins.module_utils import identifiers as ids


@pytest.mark.parametrize("name", ["ner11_db", "my-db", "_x", "A$b", "MyDb", "a" * 63, "t-1"])
def test_valid_names(name):
    assert ids.is_name(name)
    assert ids.check_name(name, "db_name") == name


@pytest.mark.parametrize("name", ["", "1db", "-db", "a b", "a;b", '"x"', "a.b", "a" * 64, "é", None, 5, "db\n"])
def test_invalid_names_name_the_option_and_the_rule(name):
    assert not ids.is_name(name)
    with pytest.raises(ids.IdentifierError, match=r"db_name .* is not a valid PostgreSQL identifier: start with a letter"):
        ids.check_name(name, "db_name")


def test_tables_qualified_or_not():
    assert ids.split_table("public.t") == ("public", "t")
    assert ids.split_table("t") == (None, "t")
    assert ids.split_table("t", default_schema="public") == ("public", "t")
    assert ids.split_table("my-schema.my-t") == ("my-schema", "my-t")
    assert ids.is_table("public.t") and ids.is_table("vendor_equipment")
    assert ids.check_table("public.t", "canary table") == "public.t"
    for bad in ("a.b.c", ".t", "t.", "public.1t", "x y", "", None, "a;drop table x"):
        assert not ids.is_table(bad)
        with pytest.raises(ids.IdentifierError, match="canary table .* is not a valid \\[schema.\\]table name"):
            ids.split_table(bad, what="canary table")


def test_quoting():
    assert ids.quote_name("my-db") == '"my-db"'
    assert ids.quote_name('we"ird') == '"we""ird"'
    assert ids.quote_table("public.t") == '"public"."t"'
    assert ids.quote_table("t") == '"t"'
    assert ids.quote_table("t", default_schema="public") == '"public"."t"'
    assert ids.quote_literal("it's") == "'it''s'"
    with pytest.raises(ids.IdentifierError):
        ids.quote_table('t"; DROP TABLE x; --')


def test_file_names():
    assert ids.check_file_name("ner11_db-20261129T020000Z", "backup id") == "ner11_db-20261129T020000Z"
    assert ids.is_file_name("my-db-20261129T020000Z")
    for bad in ("../x", "a/b", ".hidden", "a..b", "", "x" * 129, None, "-x"):
        assert not ids.is_file_name(bad)
    with pytest.raises(ids.IdentifierError, match="invalid backup id '../x': use letters"):
        ids.check_file_name("../x", "backup id")


def test_container_and_project_names():
    assert ids.is_container_name("ner11-postgres-1") and ids.is_container_name("Db.v2_x")
    assert not ids.is_container_name("-x") and not ids.is_container_name("a/b")
    assert not ids.is_container_name("x" * 129) and not ids.is_container_name(None)
    assert ids.is_project_name("ner11") and ids.is_project_name("my_stack-2")
    assert not ids.is_project_name("Ner11") and not ids.is_project_name("a.b")
    assert not ids.is_project_name("p" * 64)


def test_the_stack_model_takes_the_same_database_names():
    from ansible_collections.ner11.ops.plugins.module_utils import stack_model

    assert stack_model.normalize({"db_name": "my-db"})["db_name"] == "my-db"
    with pytest.raises(stack_model.StackModelError, match="not a valid PostgreSQL name"):
        stack_model.normalize({"db_name": "x; drop"})
