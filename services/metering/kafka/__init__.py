"""Kafka plumbing: the development broker, the service topics, and publishing logs.

* :mod:`metering.kafka.broker` - ``DevBroker`` (Tansu, in memory) and ``metering broker``.
* :mod:`metering.kafka.topics` - topic names and specs, ``ensure_topics``, and client
  security options from ``KAFKA_*`` environment variables.
* :mod:`metering.kafka.produce` - ``metering produce``: a JSON-lines log to the input
  topics.
* :mod:`metering.kafka.kcat` - running Debian's kcat against Tansu (tests, debugging).

Submodules import aiokafka lazily where they can, so importing this package is cheap.
"""
