"""Django's HTTP handler for the ASGI server (controlplane.asgi)."""

from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import sync_to_async
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core import signals
from django.core.exceptions import RequestAborted, SuspiciousOperation
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.http import FileResponse, Http404
from django.urls import set_script_prefix

# Requests one server process works on at once. The GIL runs one at a time anyway: more than one
# only lets a request's Python run while another waits for the database.
REQUEST_THREADS = 4


class SyncStackASGIHandler(ASGIHandler):
    """Django's ASGI handler doing each request's synchronous work in one hop to a thread that
    lives as long as the process.

    Every middleware and view of this project is synchronous. The stock handler runs the chain in
    async mode (each middleware's process_request and process_response hops to a thread and
    back), sends request_started and closes the response in hops of their own, and gives every
    request a new thread (a ThreadSensitiveContext, whose executor is shut down, by one more new
    thread, when the request ends). Here the request_started signal, the middleware chain, the
    view and, for a complete response, its close (request_finished: the database connection goes
    back to the pool) run in one call on one of REQUEST_THREADS long-lived threads.
    """

    def __init__(self) -> None:
        super(ASGIHandler, self).__init__()
        self.load_middleware(is_async=False)
        executor = ThreadPoolExecutor(REQUEST_THREADS, thread_name_prefix="request")
        # asgiref's thread handler: code in the view that calls async_to_sync (the live-event
        # broadcast) runs its coroutine on this server's event loop, not on a new loop.
        self.respond_in_thread = sync_to_async(
            self.respond, thread_sensitive=False, executor=executor
        )
        self.close_in_thread = sync_to_async(
            self.close_response, thread_sensitive=False, executor=executor
        )

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        response = await self.respond_in_thread(scope, body_file)
        await self.send_response(response, send)
        if response.streaming:
            await self.close_in_thread(response, body_file)

    def respond(self, scope, body_file):
        set_script_prefix(get_script_prefix(scope))
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.get_response(request)
            response._handler_class = self.__class__
            if isinstance(response, FileResponse):  # the server chunks; fewer, larger reads
                response.block_size = self.chunk_size
        if not response.streaming:  # its content is complete: nothing is left to do after send
            self.close_response(response, body_file)
        return response

    @staticmethod
    def close_response(response, body_file) -> None:
        response.close()
        body_file.close()


class StaticFilesHandler(ASGIStaticFilesHandler):
    """Django's static files for the ASGI server; a path that leaves the static root
    (``/static/%2e%2e/...``) is a 404 like any missing file, not a SuspiciousFileOperation 500."""

    def serve(self, request):
        try:
            return super().serve(request)
        except SuspiciousOperation:
            raise Http404("No such static file.") from None
