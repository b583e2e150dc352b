"""The caller's organisation: its deploy quota."""

from __future__ import annotations

from flask.views import MethodView

from libra_deploy import accounts, quota
from libra_deploy.errors import NotFound
from web.api import Blueprint
from web.context import db, principal, runtime
from web.schemas import ErrorSchema, QuotaSchema

blp = Blueprint("orgs", __name__, url_prefix="/orgs", description="Your organisation")


@blp.route("/<org_id>/quota")
class OrgQuota(MethodView):
    @blp.response(200, QuotaSchema)
    @blp.alt_response(401, schema=ErrorSchema, description="Missing or invalid credentials")
    @blp.alt_response(404, schema=ErrorSchema, description="Not your organisation")
    def get(self, org_id: str) -> quota.Usage:
        """The organisation's deploy quota this month: limit, used, reserved, remaining"""
        if org_id != principal().org_id:
            raise NotFound(f"organisation {org_id} does not exist", code="ORG_NOT_FOUND")
        session = db()
        return quota.usage(session, runtime().settings, accounts.get_organization(session, org_id))
