"""moto's server, with DynamoDB's item writes made atomic as they are in DynamoDB.

moto serves requests on threads and checks an UpdateItem's or PutItem's condition and then writes,
without a lock between the two: two racing conditional writes can both pass (seen as a task
started twice by duplicate deliveries), and a cancelled TransactWriteItems restores a copy of the
table taken before it started, erasing writes other requests made meanwhile. DynamoDB does
neither; and the copy can fail outright ("dictionary changed size during iteration", an HTTP 500
that the SDK retries: one more request than the request-accounting test expects). Holding one
lock across each table and item operation makes moto as strict as DynamoDB here, so tests that
assert exactly-once transitions can assert them on moto too.

Usage: python scripts/moto_server.py -H 127.0.0.1 -p PORT   (the same arguments as moto_server)
"""

import functools
import sys
import threading

from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.responses import DynamoHandler
from moto.server import main

# The backend's table and item operations, and the whole handling of each DynamoDB request
# (moto builds a response from the live item after the backend call returns: copying it while
# another request writes it fails the same way).
_BACKEND_OPERATIONS = (
    "create_table",
    "delete_table",
    "update_table",
    "put_item",
    "get_item",
    "update_item",
    "delete_item",
    "query",
    "scan",
    "transact_write_items",
    "transact_get_items",
    "batch_write_item",
    "batch_get_item",
)

_lock = threading.RLock()


def _atomic(operation):
    @functools.wraps(operation)
    def locked(*args, **kwargs):
        with _lock:
            return operation(*args, **kwargs)

    return locked


for _name in _BACKEND_OPERATIONS:
    setattr(DynamoDBBackend, _name, _atomic(getattr(DynamoDBBackend, _name)))
DynamoHandler.call_action = _atomic(DynamoHandler.call_action)

if __name__ == "__main__":
    sys.exit(main())
