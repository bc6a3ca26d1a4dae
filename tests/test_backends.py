"""Which Kafka and ClickHouse the stream tests use (``tests/backends.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends import ENV, BackendUnavailable, Storage, docker_reachable, select_backend


def test_without_docker_the_local_backend_is_chosen_and_why() -> None:
    """On this machine (no Docker daemon) the automatic choice is the dev broker and chDB,
    with the reason; asking for Docker explicitly fails, saying why."""
    reachable, why = docker_reachable()
    if reachable:
        pytest.skip(f"a Docker daemon answers here ({why})")
    assert "Docker" in why
    for env in ({}, {ENV: "auto"}, {ENV: " AUTO "}):
        chosen = select_backend(env)
        assert chosen.kind == "local"
        assert why in chosen.reason and "Tansu" in chosen.reason
    with pytest.raises(BackendUnavailable, match=f"{ENV}=docker but no Docker daemon answers"):
        select_backend({ENV: "docker"})


def test_explicit_local_never_looks_for_docker() -> None:
    def probe() -> tuple[bool, str]:
        raise AssertionError("probed for Docker")

    assert select_backend({ENV: "local"}, probe).kind == "local"


def test_a_reachable_docker_is_used_unless_local_is_asked_for() -> None:
    def docker_answers() -> tuple[bool, str]:
        return True, "a Docker daemon answers"

    for env in ({}, {ENV: "auto"}, {ENV: "docker"}):
        chosen = select_backend(env, docker_answers)
        assert chosen.kind == "docker" and "answers" in chosen.reason
    assert select_backend({ENV: "local"}, docker_answers).kind == "local"


def test_unknown_backend_is_an_error() -> None:
    with pytest.raises(BackendUnavailable, match="local, docker or auto"):
        select_backend({ENV: "kubernetes"})


def test_storage_is_a_directory_or_a_url() -> None:
    assert Storage(db=Path("/x")).worker_args() == ["--db", "/x"]
    url = "http://u:p@h:8123/db"
    assert Storage(url=url).worker_args() == ["--clickhouse-url", url]
    assert Storage(url=url).connect_kwargs() == {"url": url}
    with pytest.raises(ValueError):
        Storage()
    with pytest.raises(ValueError):
        Storage(db=Path("/x"), url=url)
