"""workloads/server.py without a server: the general-log parser, the init SQL, ports."""

from trace_quit.workloads import server

MARIADB_LOG = (
    "/usr/sbin/mariadbd, Version: 10.11.19-MariaDB-0+deb12u1-log (Debian 12). started with:\n"
    "Tcp port: 34567  Unix socket: /tmp/x/s.sock\n"
    "Time\t\t    Id Command\tArgument\n"
    "261122 23:01:34\t     4 Connect\troot@localhost on  using Socket\n"
    "\t\t     4 Query\tselect count(*)\n"
    "from tq.users\n"
    "\t\t     4 Quit\t\n"
    "\t\t    12 Init DB\ttq\n"
)

MYSQL8_LOG = (
    "/usr/sbin/mysqld, Version: 8.0.36-0ubuntu0.22.04.1 ((Ubuntu)). started with:\n"
    "Tcp port: 0  Unix socket: /tmp/x/mysqld.sock\n"
    "Time                 Id Command    Argument\n"
    "2024-03-01T10:00:00.123456Z\t    8 Connect\ttq_app@localhost on tq using SSL/TLS\n"
    "2024-03-01T10:00:00.123789Z\t    8 Query\tselect 1\n"
    "2024-03-01T10:00:00.124000Z\t    8 Quit\t\n"
)


def test_parse_mariadb_general_log():
    assert server.parse_general_log(MARIADB_LOG) == [
        (4, "Connect", "root@localhost on  using Socket"),
        (4, "Query", "select count(*)"),  # the continuation line is not an entry
        (4, "Quit", ""),
        (12, "Init DB", "tq"),
    ]


def test_parse_mysql8_general_log():
    assert server.parse_general_log(MYSQL8_LOG) == [
        (8, "Connect", "tq_app@localhost on tq using SSL/TLS"),
        (8, "Query", "select 1"),
        (8, "Quit", ""),
    ]


def test_init_sql_one_statement_per_line_and_escaped_password():
    sql = server._init_sql("it's\\x")
    lines = sql.strip().splitlines()
    assert all(line.endswith(";") for line in lines)
    assert "IDENTIFIED BY 'it\\'s\\\\x'" in sql
    assert sum(line.startswith("CREATE USER") for line in lines) == 2  # localhost and 127.0.0.1
    assert sum(line.startswith("GRANT PROCESS ON *.*") for line in lines) == 2
    insert = [line for line in lines if line.startswith("INSERT")][0]
    assert insert.count("),(") == server.USERS_ROWS - 1
    assert "(100,'user100','user100@example.com');" in insert


def test_free_port_is_bindable_on_loopback_and_never_3306():
    import socket

    port = server.free_port()
    assert port != 3306
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_flavor_and_version_from_version_lines():
    assert server._flavor_version("/usr/sbin/mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64") \
        == ("mariadb", "10.11.19-MariaDB-0+deb12u1")
    assert server._flavor_version("/usr/sbin/mysqld  Ver 8.0.36-0ubuntu0.22.04.1 for Linux on x86_64 ((Ubuntu))") \
        == ("mysql", "8.0.36-0ubuntu0.22.04.1")
