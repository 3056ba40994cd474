"""Each ExportError's code is the snake_case of its class name; that code is the JSON body's error.code."""

from __future__ import annotations

import pytest

from exporter import errors
from exporter.errors import ExportError, RangeNotSatisfiable, error_response

CODES: dict[type[ExportError], str] = {
    errors.UnknownDataset: "unknown_dataset",
    errors.UnknownFormat: "unknown_format",
    errors.UnknownColumn: "unknown_column",
    errors.UnknownOperator: "unknown_operator",
    errors.ColumnNotFilterable: "column_not_filterable",
    errors.InvalidValue: "invalid_value",
    errors.InvalidParameter: "invalid_parameter",
    errors.AfterRequiresKeyOrder: "after_requires_key_order",
    errors.TooManyParameters: "too_many_parameters",
    errors.ParameterTooLong: "parameter_too_long",
    errors.TooManyValues: "too_many_values",
    errors.TooManyRowsForXlsx: "too_many_rows_for_xlsx",
    errors.DatasetUnavailable: "dataset_unavailable",
    errors.DatabaseUnavailable: "database_unavailable",
    errors.StorageFull: "storage_full",
    errors.StorageUnavailable: "storage_unavailable",
    errors.UnknownRoot: "unknown_root",
    errors.FileNotFound: "file_not_found",
    errors.InvalidPath: "invalid_path",
    errors.RangeNotSatisfiable: "range_not_satisfiable",
    errors.FileChanged: "file_changed",
    errors.FileUnreadable: "file_unreadable",
    errors.UnknownUpstream: "unknown_upstream",
    errors.UpstreamUnreachable: "upstream_unreachable",
    errors.UpstreamTimeout: "upstream_timeout",
    errors.UpstreamRedirect: "upstream_redirect",
    errors.TooManyRelays: "too_many_relays",
    errors.UnknownJob: "unknown_job",
    errors.JobNotFinished: "job_not_finished",
    errors.JobFailed: "job_failed",
    errors.JobCancelled: "job_cancelled",
    errors.JobExpired: "job_expired",
    errors.IdempotencyConflict: "idempotency_conflict",
    errors.TooManyJobs: "too_many_jobs",
    errors.Unauthorized: "unauthorized",
    errors.MissingToken: "missing_token",
    errors.InvalidToken: "invalid_token",
    errors.ExpiredToken: "expired_token",
    errors.RevokedToken: "revoked_token",
    errors.Forbidden: "forbidden",
    errors.InvalidCsrfToken: "invalid_csrf_token",
    errors.LinkExpired: "link_expired",
    errors.TokenInUrl: "token_in_url",
    errors.TooManyRequests: "too_many_requests",
    errors.TooManyFailedAttempts: "too_many_failed_attempts",
    errors.RowLimitExceeded: "row_limit_exceeded",
    errors.ShuttingDown: "shutting_down",
    errors.Busy: "busy",
    errors.StatementTimeout: "statement_timeout",
    errors.BodyTooLarge: "body_too_large",
}


def all_subclasses(cls: type[ExportError]) -> set[type[ExportError]]:
    return {sub for direct in cls.__subclasses__() for sub in (direct, *all_subclasses(direct))}


@pytest.mark.parametrize(("error", "code"), CODES.items(), ids=[cls.__name__ for cls in CODES])
def test_error_code_is_the_snake_case_class_name(error: type[ExportError], code: str) -> None:
    assert error.code() == code
    assert error("message", parameter="p").code() == code


def test_every_export_error_has_its_code_in_the_table() -> None:
    assert {cls for cls in all_subclasses(ExportError) if cls.__module__ == errors.__name__} == set(CODES)


def test_an_error_can_carry_headers_into_its_json_response() -> None:
    response = error_response(RangeNotSatisfiable("no", headers={"Content-Range": "bytes */10"}))
    assert response.status_code == 416
    assert response.headers["content-range"] == "bytes */10"
    assert response.body == b'{"error":{"code":"range_not_satisfiable","message":"no"}}'
