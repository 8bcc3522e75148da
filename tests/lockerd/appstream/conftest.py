"""The cluster fixtures (a shared PostgreSQL schema) for the multi-node app test."""

from tests.cluster.conftest import cluster_database

__all__ = ["cluster_database"]
