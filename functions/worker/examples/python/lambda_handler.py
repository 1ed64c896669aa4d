# A taskq `lambda` target in Python (any Lambda runtime works the same way).
# taskq invokes it synchronously with the task; what it returns is the task's result.


class BadImagePermanent(Exception):
    """An errorType ending in "Permanent" fails the task at once, without a retry."""


def handler(task, context):
    # task: {"id", "type", "payload", "attempt", "max_attempts", "deadline"}
    key = task["payload"].get("key")
    if not isinstance(key, str):
        raise BadImagePermanent("payload.key must be a string")
    if key.startswith("busy/") and task["attempt"] == 1:
        # Any other error is retried with backoff, up to the task's max_attempts.
        raise RuntimeError("storage is busy, try again")
    # ... the work, finished before task["deadline"] (RFC 3339) ...
    return {"thumbnail": "thumbs/" + key, "attempt": task["attempt"]}
