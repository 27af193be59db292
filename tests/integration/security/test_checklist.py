"""The security checks: each one, and the tests that prove it (docs/security.md has the threat model).

Paths are relative to tests/integration/. Run the whole set with
``pytest tests/integration/security`` (the checks proven elsewhere run with their own directories).
The test below keeps this list honest: every test named here must exist.

1. Token guessing is limited and logged
   - a client's guesses (malformed token, unknown id, wrong secret) are limited per address,
     RESOURCE_EXHAUSTED with grpc-retry-pushback-ms; a valid token from another address still
     joins; every failure logged with peer and token id, never a secret; counted on /metrics:
     security/test_token_guessing.py::test_guesses_from_one_address_are_limited_logged_and_counted
   - an IPv6 client is one client (its /64) whatever source port each connection has:
     security/test_token_guessing.py::test_an_ipv6_client_is_limited_however_many_connections_it_opens
   - past the total, clients that guessed are refused; a client that never did still joins:
     security/test_token_guessing.py::test_past_the_total_a_client_that_never_guessed_still_joins
   - a known token that is used up or revoked is no guess (a fleet joining with one token is
     never locked out):
     security/test_token_guessing.py::test_a_known_token_that_cannot_be_used_is_not_a_guess
   - the window, the total, the memory bound and the client key (IPv6 per /64, IPv4-mapped as
     IPv4) with a test clock:
     security/test_token_guessing.py::test_a_client_is_refused_after_its_failures_until_the_window_moves_on
     security/test_token_guessing.py::test_past_the_total_only_clients_that_failed_are_refused
     security/test_token_guessing.py::test_clients_tracked_stay_bounded_under_a_flood_of_addresses
     security/test_token_guessing.py::test_the_client_a_peer_counts_as
     security/test_token_guessing.py::test_the_limits_are_settings_with_units
   - unusable tokens are refused with a clear reason that never echoes the secret; the CA pin
     is checked before the token is sent:
     fleet/test_enrolment.py::test_unusable_tokens_are_refused_clearly
     fleet/test_enrolment.py::test_wrong_ca_hash_is_refused_before_the_token_is_sent
   - a token's use count holds under parallel joins:
     fleet/test_parallel_joins.py::test_parallel_joins_use_a_token_exactly_as_often_as_allowed

2. A probe cannot upload as another probe, read anything, or act in the web UI
   - every RPC a probe's certificate reaches is reviewed (reflection; a new RPC fails until it is):
     security/test_probe_isolation.py::test_every_rpc_a_probe_reaches_is_reviewed
   - GetOffset answers only for the caller's own files (no offset, receipt or conflict of another):
     security/test_probe_isolation.py::test_get_offset_answers_only_for_the_callers_own_files
   - no continuing, overwriting or resuming another probe's file; its landing tree is untouched:
     security/test_probe_isolation.py::test_a_probe_cannot_continue_or_overwrite_another_probes_file
   - metadata naming another probe is refused with nothing written; metadata spelling another
     probe's landing path lands under the caller only:
     security/test_probe_isolation.py::test_metadata_pointing_at_another_probe_never_writes_there
     uploads/test_hostile.py::test_metadata_naming_another_probe_is_refused
     uploads/test_hostile.py::test_path_like_strings_never_name_a_path
   - heartbeats carry only the caller's commands; acknowledging another probe's is NOT_FOUND;
     another probe's Leave ends only its own enrolment:
     security/test_probe_isolation.py::test_a_probe_gets_and_acknowledges_only_its_own_commands
   - a probe's certificate (over HTTPS) opens no page, API or action of the web UI:
     security/test_probe_isolation.py::test_a_probe_certificate_opens_nothing_in_the_web_ui

3. Expired, revoked and foreign certificates are refused (probe control and uploads)
   - every RPC of the control port, each time with the control that the probe's real
     certificate still works:
     security/test_certificates.py::test_an_expired_certificate_of_an_enrolled_probe_is_refused
     security/test_certificates.py::test_a_certificate_not_yet_valid_is_refused
     security/test_certificates.py::test_a_certificate_of_a_foreign_ca_is_refused_even_naming_a_probe
     security/test_certificates.py::test_a_certificate_of_this_ca_that_names_no_probe_is_refused
     security/test_certificates.py::test_the_server_certificate_is_no_client_certificate
     security/test_certificates.py::test_the_certificate_of_a_probe_that_left_is_refused_everywhere
   - no client certificate, or another CA's, on heartbeats; a left probe's heartbeat and the
     leave command end to end with real probe processes:
     fleet/test_enrolment.py::test_no_valid_certificate_gets_nothing
     uploads/test_hostile.py::test_a_caller_without_a_client_certificate_gets_nothing
     fleet/test_liveness.py::test_leave_then_the_certificate_is_refused

4. The web UI under an authenticated scanner pass
   - every route of app.url_map, real and hostile path values, hostile queries and forms: no
     session, an anonymous session, a viewer, an admin with a missing / forged / other session's /
     viewer's CSRF token (form and header); never a 500, never raw markup echoed, security
     headers everywhere; public routes only from the allow-list; the admin's own token as control:
     security/test_web_scan.py::test_every_route_refuses_callers_without_the_right_session_and_token
     security/test_web_scan.py::test_session_actions_need_the_token
     security/test_web_scan.py::test_options_and_unknown_methods_open_nothing
     security/test_web_scan.py::test_the_public_list_names_only_public_routes
   - the scan itself fails on a planted unprotected route and on planted raw echo:
     security/test_web_scan.py::test_the_scan_finds_a_new_route_that_needs_no_login
     security/test_web_scan.py::test_the_scan_finds_a_public_route_that_echoes_markup
   - login limits, session lifetime, cookie flags, open redirects, role changes at once:
     web/test_access.py::test_wrong_passwords_are_limited_per_address
     web/test_access.py::test_the_session_cookie_is_http_only_and_same_site
     web/test_access.py::test_login_sends_only_to_pages_of_this_site
     web/test_access.py::test_a_removed_user_or_a_lost_role_counts_at_once
     web/test_access.py::test_a_login_older_than_the_session_lifetime_is_over
     web/test_access.py::test_the_session_key_is_private_and_survives_a_restart
   - /metrics closed by configuration:
     web/test_metrics.py::test_metrics_can_need_a_web_account_or_be_off
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

INTEGRATION = Path(__file__).resolve().parent.parent
REFERENCE = re.compile(r"^\s+([\w/]+\.py)::(\w+)$", re.MULTILINE)


def test_every_test_the_list_names_exists() -> None:
    references = REFERENCE.findall(__doc__ or "")
    assert len(references) > 30
    for path, name in references:
        source = INTEGRATION / path
        assert source.is_file(), path
        defined = {n.name for n in ast.walk(ast.parse(source.read_text())) if isinstance(n, ast.FunctionDef)}
        assert name in defined, f"{path}::{name} is listed but does not exist"


def test_every_security_test_is_listed() -> None:
    listed = {(p, n) for p, n in REFERENCE.findall(__doc__ or "")}
    for source in sorted(Path(__file__).parent.glob("test_*.py")):
        tree = ast.parse(source.read_text())
        for node in tree.body:
            if (
                isinstance(node, ast.FunctionDef)
                and node.name.startswith("test_")
                and source.name != Path(__file__).name
            ):
                assert (f"security/{source.name}", node.name) in listed, (
                    f"{source.name}::{node.name} is not listed"
                )
