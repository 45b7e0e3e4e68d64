"""``gateway explain`` shows the authz step (issue #16 with #19): the rule that refused, and the
same answer as the live gateway (status, challenge, error)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import GatewayFactory, Pki, Upstream
from tests.dpop.proofs import ath, es256
from tests.explain.test_parity import explained, live, start
from tests.tokens.authserver import AuthServer

from .test_e2e import ACCOUNT, config

pytestmark = pytest.mark.timeout(120)


async def test_explain_names_the_refusing_rule(gateway: GatewayFactory, auth_server: AuthServer, pki: Pki,
                                               upstream: Upstream) -> None:
    gw, cfg = await start(gateway, pki, config(auth_server, pki, upstream))
    signer = es256()
    tok = auth_server.token("ec-1", cnf={"jkt": signer.jkt}, authorization_details=[ACCOUNT],
                            openbanking_intent_id="intent-1")
    for path, allowed in (("/accounts/acc-2/balances", False), ("/accounts/acc-1/balances", True)):
        headers = [("Authorization", f"DPoP {tok}"), ("x-intent-id", "intent-1")]
        live_headers = [*headers, ("DPoP", signer.proof(htm="GET", htu=f"https://localhost:{gw.port}{path}",
                                                        ath=ath(tok), iat=int(time.time())))]
        got_live = await live(gw.port, pki, "GET", path, live_headers)
        explain_headers = [*headers, ("DPoP", signer.proof(htm="GET", htu=f"https://localhost:{gw.port}{path}",
                                                           ath=ath(tok), iat=int(time.time())))]
        got, exp = await explained(cfg, gw.port, "GET", path, explain_headers, online=True)
        (step,) = [s for s in exp.steps if s.name == "authz"]
        if allowed:
            assert got_live[0] == 200 and exp.verdict == "allow" and step.status == "pass", exp.steps
        else:
            assert got == got_live, exp.steps
            assert got[0] == 403 and step.status == "fail" and "authz_account_read" in step.summary
            assert ("rule account_read", step.facts[0][1], "MISMATCH") == step.facts[0]
