"""The private Tornado behaviour serving/compat.py relies on: this fails when a Tornado upgrade changes it."""
import inspect

from tornado import http1connection

from serving import compat


def test_tornado_still_answers_a_malformed_request_with_these_bytes():
    assert repr(compat.TORNADO_BAD_REQUEST)[2:-1] in inspect.getsource(http1connection.HTTP1Connection._read_message)


def test_the_bare_answer_is_replaced_and_everything_else_written_as_is():
    written = []

    class Stream:
        def write(self, data):
            written.append(data)

    stream = Stream()
    compat.answer_bad_requests_with(stream, b"JSON")
    stream.write(compat.TORNADO_BAD_REQUEST)
    stream.write(b"HTTP/1.1 200 OK\r\n\r\n")
    assert written == [b"JSON", b"HTTP/1.1 200 OK\r\n\r\n"]


def test_tornado_still_keeps_the_private_state_compat_uses():
    from tornado.httpserver import HTTPServer
    from tornado.tcpserver import TCPServer

    server = HTTPServer(lambda request: None)
    assert isinstance(server._connections, set) and compat.open_connections(server) == 0
    assert isinstance(server._sockets, dict) and isinstance(server._handlers, dict)
    assert "self._handlers.pop(fd)()" in inspect.getsource(TCPServer.stop)  # how stop() removes our handlers
    assert callable(server._handle_connection)
