"""The incident and its fixes as runnable programs, and a disposable MySQL/MariaDB server."""
