"""The streaming service on Kafka: a Faust worker that meters the input topics.

Modules: :mod:`~metering.stream.settings` (flags and environment),
:mod:`~metering.stream.app` (the Faust app and the commit order),
:mod:`~metering.stream.pipeline` (engine + sink glue, no Faust),
:mod:`~metering.stream.web` (HTTP API), :mod:`~metering.stream.metrics` (Prometheus),
:mod:`~metering.stream.cli` (``metering worker`` and ``metering up``).
Importing this package does not import Faust.
"""
