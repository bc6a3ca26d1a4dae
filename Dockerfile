# The metering service image (docker-compose.yml builds it for the `worker` service).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml ./
COPY services ./services
RUN pip install . \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/metering metering \
    && rm -rf /src

# The worker keeps its local state (Faust tables) under its working directory.
USER metering
WORKDIR /var/lib/metering
EXPOSE 6066

CMD ["metering", "--help"]
