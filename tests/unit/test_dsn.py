"""DSNs: one spelling for every workload, the sampler and --dsn (workloads/dsn.py)."""

import pytest

from trace_quit.workloads import dsn


def test_tcp_dsn_to_mysqldb_kwargs():
    assert dsn.parse("mysql://tq_app:s3cret@127.0.0.1:33061/tq") == {
        "host": "127.0.0.1", "port": 33061, "user": "tq_app", "password": "s3cret", "database": "tq"}


def test_socket_dsn_to_mysqldb_kwargs():
    assert dsn.parse("mysql://tq_app:pw@localhost/tq?unix_socket=/tmp/x/mysqld.sock") == {
        "host": "localhost", "user": "tq_app", "password": "pw", "database": "tq",
        "unix_socket": "/tmp/x/mysqld.sock"}


def test_percent_encoded_user_and_password_are_decoded():
    kwargs = dsn.parse("mysql://a%40b:p%40ss%3Aw%2Frd@db.example:3306/app")
    assert (kwargs["user"], kwargs["password"], kwargs["host"]) == ("a@b", "p@ss:w/rd", "db.example")


def test_missing_parts_default():
    assert dsn.parse("mysql://root@localhost/") == {
        "host": "localhost", "user": "root", "password": "", "database": ""}
    assert dsn.parse("mariadb://u@h")["database"] == ""


def test_driver_suffix_is_accepted_and_replaced_for_sqlalchemy():
    assert dsn.parse("mysql+mysqldb://u:p@h:1/d")["port"] == 1
    assert dsn.sqlalchemy_url("mysql://u:p@h:1/d") == "mysql+mysqldb://u:p@h:1/d"
    assert dsn.sqlalchemy_url("mysql://u:p@localhost/d?unix_socket=/s") == \
        "mysql+mysqldb://u:p@localhost/d?unix_socket=/s"


def test_sqlalchemy_accepts_the_url_with_the_same_parts():
    from sqlalchemy.engine import make_url

    url = make_url(dsn.sqlalchemy_url("mysql://tq_app:p%40ss@localhost/tq?unix_socket=/tmp/s.sock"))
    assert (url.drivername, url.username, url.password, url.host, url.database) == \
        ("mysql+mysqldb", "tq_app", "p@ss", "localhost", "tq")
    assert url.query["unix_socket"] == "/tmp/s.sock"


def test_redact_hides_only_the_password():
    assert dsn.redact("mysql://tq_app:s3cret@127.0.0.1:33061/tq") == "mysql://tq_app:***@127.0.0.1:33061/tq"
    assert dsn.redact("mysql://u:pw@localhost/tq?unix_socket=/pw/s") == "mysql://u:***@localhost/tq?unix_socket=/pw/s"
    assert dsn.redact("mysql://root@localhost/") == "mysql://root@localhost/"


def test_wrong_scheme_is_refused_without_echoing_the_password():
    with pytest.raises(ValueError) as info:
        dsn.parse("postgresql://u:topsecret@h/db")
    assert "topsecret" not in str(info.value)
    assert "mysql://user:password@host:port/db" in str(info.value)
