"""The study's experiments as runnable programs, and a disposable MySQL/MariaDB server."""
