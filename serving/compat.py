"""The private Tornado behaviour the REST server relies on, in one place (serving/ depends on nothing of the
pipeline's, so it has its own). Checked against tornado 6.5.10; tests/serving/test_compat.py fails when it
changes.
"""
TORNADO_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\n\r\n"  # what HTTP1Connection writes on a malformed request


def answer_bad_requests_with(stream, answer: bytes) -> None:
    """Makes Tornado's bare answer to a malformed request line, header or chunk on `stream` (an IOStream the
    HTTP server is given) `answer` instead. Tornado writes those bytes itself, with no hook to change them."""
    write = stream.write

    def write_instead(data, *args, **kwargs):
        return write(answer if data == TORNADO_BAD_REQUEST else data, *args, **kwargs)

    stream.write = write_instead


def open_connections(server) -> int:
    """The connections an HTTPServer has open (its private set, kept by handle_stream and on_close)."""
    return len(server._connections)


def listen(server, sockets, accept) -> None:
    """TCPServer.add_sockets with our own accept handler: `accept(loop, sock, handle)` returns the IOLoop
    handler for `sock`, calling `handle(connection, address)` (TCPServer's private _handle_connection) for each
    connection it keeps; stop() removes the handlers through the server's private _handlers, as for its own."""
    from tornado.ioloop import IOLoop

    loop = IOLoop.current()
    for sock in sockets:
        handler = accept(loop, sock, server._handle_connection)
        loop.add_handler(sock, handler, IOLoop.READ)
        server._sockets[sock.fileno()] = sock
        server._handlers[sock.fileno()] = lambda sock=sock: (setattr(handler, "removed", True),
                                                             loop.remove_handler(sock))
