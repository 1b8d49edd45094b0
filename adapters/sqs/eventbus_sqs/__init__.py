"""AWS SQS adapter with SNS fan-out for eventbus (aioboto3), registered for ``sqs://`` URLs.

Install ``eventbus-sqs`` and set ``EVENTBUS_URL=sqs://?region=eu-west-1``; see
``docs/adapters/sqs.md`` for the options and the guarantees.
"""

from .adapter import SqsAdapter
from .provision import ProvisioningError
from .settings import SqsSettings

__all__ = ["ProvisioningError", "SqsAdapter", "SqsSettings"]
