"""The broker versions the process path runs, and the container images of the same
versions (docker-compose.yml's services, testcontainers' and the clusters').

The process path runs Debian 12's packages, which ``.ci/start-brokers`` installs,
Apache Kafka from Maven Central (:mod:`.kafka_dist`) and ElasticMQ likewise
(:mod:`.sqs_emulators`); ``tests/test_compose_clusters.py`` and
``tests/test_compose_brokers.py`` check the images and the installed packages
against these.
"""

from __future__ import annotations

from . import kafka_dist
from .sqs_emulators import ELASTICMQ_VERSION

PACKAGE_VERSIONS = {"nats": "2.9.10", "rabbitmq": "3.10.8", "redis": "7.0.15"}
POSTGRES_MAJOR = "15"

KAFKA_IMAGE = f"apache/kafka:{kafka_dist.KAFKA_VERSION}"
RABBITMQ_IMAGE = f"rabbitmq:{PACKAGE_VERSIONS['rabbitmq']}"
NATS_IMAGE = f"nats:{PACKAGE_VERSIONS['nats']}-alpine"  # a shell for the healthcheck
REDIS_IMAGE = f"redis:{PACKAGE_VERSIONS['redis']}"
POSTGRES_IMAGE = f"postgres:{POSTGRES_MAJOR}"
ELASTICMQ_IMAGE = f"softwaremill/elasticmq-native:{ELASTICMQ_VERSION}"
# SQS and SNS in a container: LocalStack. The process path runs moto's server (and
# ElasticMQ) instead; LocalStack is not run on this project's CI.
LOCALSTACK_IMAGE = "localstack/localstack:3.8"
