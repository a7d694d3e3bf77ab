"""The OpenAPI document, generated from the same msgspec structs the code uses."""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from serving.schemas import Accepted, ErrorBody, Health, ItemsAnswer, OffersAnswer, ProfileAnswer
from streams.events import AnyEvent, ExperimentSpec

REF = "#/components/schemas/{name}"
ID_PARAM = {"type": "string", "pattern": r"^[A-Za-z0-9_.:@/+\-]{1,128}$"}


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": REF.format(name=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {401: "admin key missing or wrong", 403: "admin operations are off",
            404: "not found", 413: "too large", 415: "not JSON", 422: "invalid input",
            503: "a dependency is unavailable; retry after the Retry-After header"}
    return {str(c): _json(_ref("ErrorBody"), text[c]) for c in codes}


def _get_items(summary: str, param: str, extra: list[dict[str, Any]]) -> dict[str, Any]:
    return {"get": {
        "summary": summary,
        "parameters": [{"name": param, "in": "path", "required": True, "schema": ID_PARAM},
                       {"name": "limit", "in": "query", "required": False,
                        "schema": {"type": "integer", "minimum": 1, "maximum": 100,
                                   "default": 10}}, *extra],
        "responses": {"200": _json(_ref("ItemsAnswer"), "ranked items with reasons"),
                      **_errors(422)},
    }}


@functools.cache
def openapi_document() -> dict[str, Any]:
    (answer, accepted, error, health, event, profile, offers), components = \
        msgspec.json.schema_components(
            [ItemsAnswer, Accepted, ErrorBody, Health, AnyEvent, ProfileAnswer, OffersAnswer],
            ref_template=REF)
    user = [{"name": "user_id", "in": "path", "required": True, "schema": ID_PARAM}]
    context = {"name": "context_item", "in": "query", "required": False, "schema": ID_PARAM,
               "description": "the item on the page, blended in as session context"}
    doc = {
        "openapi": "3.1.0",
        "info": {"title": "Aisle", "version": "1",
                 "description": "Streaming recommendations for retail."},
        "paths": {
            "/v1/items/{item_id}/related": _get_items(
                "Related products (ALS-similar blended with co-purchase and co-view)",
                "item_id", []),
            "/v1/users/{user_id}/recommendations": _get_items(
                "Recommendations for a customer (unknown customers get trending items)",
                "user_id", [context]),
            "/v1/users/{user_id}/profile": {"get": {
                "summary": "The shop assistant's view of a customer (segment, RFM, lifecycle, "
                           "churn risk, tier, replenishments, offers)",
                "parameters": user,
                "responses": {"200": _json(profile, "profile"), **_errors(422)}}},
            "/v1/users/{user_id}/offers": {"get": {
                "summary": "Active limited-time offers; issues one when the policy says so",
                "parameters": user,
                "responses": {"200": _json(offers, "offers"), **_errors(422)}}},
            "/v1/users/{user_id}": {"delete": {
                "summary": "Erase a customer (admin: Authorization: Bearer <key>)",
                "parameters": user, "security": [{"admin": []}],
                "responses": {"202": _json(accepted, "erasure recorded"),
                              **_errors(401, 403, 422, 503)}}},
            "/v1/events": {"post": {
                "summary": "Submit one event or a batch (JSON array); 202 once Kafka has them",
                "requestBody": {"required": True, "content": {"application/json": {
                    "schema": {"oneOf": [event, {"type": "array", "items": event,
                                                 "minItems": 1, "maxItems": 500}]}}}},
                "responses": {"202": _json(accepted, "accepted"),
                              **_errors(413, 415, 422, 503)},
            }},
            "/healthz": {"get": {"summary": "Liveness",
                                 "responses": {"200": _json(health, "alive")}}},
            "/readyz": {"get": {"summary": "Readiness (store reachable)",
                                "responses": {"200": _json(health, "ready"),
                                              "503": _json(health, "not ready")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics",
                                 "responses": {"200": {"description": "text exposition"}}}},
        },
        "components": {"schemas": {**components, "ErrorBody": error},
                       "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}}},
    }
    _add_experiments(doc)
    return doc


XID_PARAM = {"name": "experiment_id", "in": "path", "required": True,
             "schema": {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_-]{0,39}$"}}


def _add_experiments(doc: dict[str, Any]) -> None:
    """The experiment admin and results endpoints (docs/experiments.md)."""
    (spec,), components = msgspec.json.schema_components([ExperimentSpec], ref_template=REF)
    doc["components"]["schemas"].update(components)
    accepted, admin = _ref("Accepted"), [{"admin": []}]
    obj = {"type": "object"}
    doc["paths"].update({
        "/v1/admin/experiments": {"post": {
            "summary": "Create an experiment (admin); recorded as experiment.created",
            "security": admin,
            "requestBody": {"required": True, "content": {"application/json": {"schema": spec}}},
            "responses": {"202": _json(accepted, "recorded"),
                          **_errors(401, 403, 413, 415, 422, 503),
                          "409": _json(_ref("ErrorBody"), "id taken or layer range overlaps")}}},
        "/v1/admin/experiments/{experiment_id}": {"patch": {
            "summary": "Change fields of an experiment (admin); experiment.updated",
            "security": admin, "parameters": [XID_PARAM],
            "requestBody": {"required": True, "content": {"application/json": {"schema": obj}}},
            "responses": {"202": _json(accepted, "recorded"),
                          **_errors(401, 403, 404, 413, 415, 422, 503),
                          "409": _json(_ref("ErrorBody"), "stopped, or layer range overlaps")}}},
        "/v1/admin/experiments/{experiment_id}/stop": {"post": {
            "summary": "Stop an experiment (admin); experiment.stopped",
            "security": admin, "parameters": [XID_PARAM],
            "responses": {"202": _json(accepted, "recorded"),
                          **_errors(401, 403, 404, 422, 503)}}},
        "/v1/experiments": {"get": {
            "summary": "All experiments with status, surfaces, layer and variants",
            "responses": {"200": _json(obj, "{experiments: [...]}")}}},
        "/v1/experiments/{experiment_id}/results": {"get": {
            "summary": "Per-variant users, exposures, CTR, conversion, revenue per user, AOV; "
                       "lift vs control with 95% intervals; SRM check; guardrails",
            "parameters": [XID_PARAM, {"name": "series", "in": "query", "required": False,
                                       "schema": {"type": "boolean"}}],
            "responses": {"200": _json(obj, "results"), **_errors(404, 422)}}},
    })


DOCS_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>Aisle API</title>
<link rel="stylesheet" href="https://unpkg.com/swagger-ui-dist@5/swagger-ui.css"></head>
<body><div id="ui"></div>
<script src="https://unpkg.com/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
<noscript>The machine-readable spec is at <a href="/openapi.json">/openapi.json</a>.</noscript>
</body></html>
"""
