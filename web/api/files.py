"""Upload by content hash: ask which files are missing, upload those, then deploy by hash."""

from __future__ import annotations

from typing import Any

from flask import request
from flask.views import MethodView

from libra_deploy import uploads
from web.api import Blueprint
from web.context import db, principal, runtime
from web.schemas import ErrorSchema, FilesCheckSchema, FilesMissingSchema, FileStoredSchema

READ_CHUNK = 1024 * 1024
blp = Blueprint(
    "files",
    __name__,
    url_prefix="/projects",
    description="Upload files by SHA-256 so that a deployment sends only what the service lacks",
)


@blp.route("/<project_id>/files/check")
class FilesCheck(MethodView):
    @blp.arguments(FilesCheckSchema)
    @blp.response(200, FilesMissingSchema)
    @blp.alt_response(400, schema=ErrorSchema, description="A hash is not a SHA-256")
    @blp.alt_response(404, schema=ErrorSchema, description="No such project in your organisation")
    @blp.alt_response(413, schema=ErrorSchema, description="More hashes than MAX_FILES")
    def post(self, body: dict[str, Any], project_id: str) -> dict[str, Any]:
        """Which of these files must be uploaded

        Answers the hashes your organisation has not uploaded yet (or that the service no longer
        holds), in the order given; upload each with PUT, then deploy with `files: [{path, sha256}]`.
        """
        rt = runtime()
        missing = uploads.missing(db(), rt.store, rt.settings, principal().org_id, project_id, body["hashes"])
        return {"missing": missing}


@blp.route("/<project_id>/files/<sha256>")
class FileUpload(MethodView):
    @blp.doc(
        requestBody={
            "required": True,
            "description": "The file's raw bytes; their SHA-256 must be the one in the path",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    )
    @blp.response(200, FileStoredSchema)
    @blp.alt_response(400, schema=ErrorSchema, description="Not a SHA-256, or the body has another hash")
    @blp.alt_response(404, schema=ErrorSchema, description="No such project in your organisation")
    @blp.alt_response(413, schema=ErrorSchema, description="The file is larger than MAX_FILE_BYTES")
    def put(self, project_id: str, sha256: str) -> dict[str, Any]:
        """Upload one file, named by its SHA-256"""
        rt = runtime()
        limit = rt.settings.max_file_bytes
        if request.content_length is not None and request.content_length > limit:
            raise uploads.file_too_large(rt.settings)
        data = _read_body(limit + 1)
        if len(data) > limit:
            raise uploads.file_too_large(rt.settings)
        session = db()
        with session.begin():
            size = uploads.upload(
                session, rt.store, rt.settings, principal().org_id, project_id, sha256, data
            )
        return {"success": True, "sha256": sha256, "size": size}


def _read_body(most: int) -> bytes:
    """The request body, or its first ``most`` bytes: enough to refuse a body without Content-Length."""
    chunks: list[bytes] = []
    size = 0
    # A read may return less than asked before the end of the body, so read until it returns nothing.
    while size < most:
        chunk = request.stream.read(min(READ_CHUNK, most - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
