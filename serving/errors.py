"""TF Serving's error vocabulary: a gRPC status code name and a message."""

HTTP_STATUS = {"OK": 200, "INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400,
               "NOT_FOUND": 404, "DEADLINE_EXCEEDED": 504, "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503,
               "UNIMPLEMENTED": 501, "UNKNOWN": 500, "INTERNAL": 500}


class ServingError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.code, 500)
