"""RFC 9421 Appendix B and RFC 9530 test vectors through the gateway's own verification code
(``gateway.signatures.verify.signature_verifies``, ``gateway.signatures.digest``).

Keys: RFC 9421 Appendix B.1.1 (test-key-rsa-pss) and B.1.4 (test-key-ed25519), public parts.
Request: Appendix B.2. Signatures: B.2.1 (RSA-PSS, no components, nonce), B.2.3 (RSA-PSS, full
coverage) and B.2.6 (Ed25519, deterministic). Each vector must verify, and fail once tampered.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from http_message_signatures import algorithms

from gateway.errors import DigestMismatchError
from gateway.signatures.algorithms import algorithm_for
from gateway.signatures.digest import check_content_digest, content_digest
from gateway.signatures.verify import signature_verifies

RSA_PSS = load_pem_public_key(b"""-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAr4tmm3r20Wd/PbqvP1s2
+QEtvpuRaV8Yq40gjUR8y2Rjxa6dpG2GXHbPfvMs8ct+Lh1GH45x28Rw3Ry53mm+
oAXjyQ86OnDkZ5N8lYbggD4O3w6M6pAvLkhk95AndTrifbIFPNU8PPMO7OyrFAHq
gDsznjPFmTOtCEcN2Z1FpWgchwuYLPL+Wokqltd11nqqzi+bJ9cvSKADYdUAAN5W
Utzdpiy6LbTgSxP7ociU4Tn0g5I6aDZJ7A8Lzo0KSyZYoA485mqcO0GVAdVw9lq4
aOT9v6d+nb4bnNkQVklLQ3fVAvJm+xdDOp9LCNCN48V2pnDOkFV6+U9nV5oyc6XI
2wIDAQAB
-----END PUBLIC KEY-----
""")
ED25519 = load_pem_public_key(b"""-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJrQLj5P/89iXES9+vFgrIy29clF9CC/oPPsw3c5D0bs=
-----END PUBLIC KEY-----
""")

URL = "https://example.com/foo?param=Value&Pet=dog"
BODY = b'{"hello": "world"}'
HEADERS = {
    "Host": "example.com",
    "Date": "Tue, 20 Apr 2021 02:07:55 GMT",
    "Content-Type": "application/json",
    "Content-Digest": "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+"
                      "AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:",
    "Content-Length": "18",
}

VECTORS = {
    "B.2.1": (RSA_PSS, "rsa-pss-sha512",
              'sig-b21=();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd"',
              "sig-b21=:d2pmTvmbncD3xQm8E9ZV2828BjQWGgiwAaw5bAkgibUopemLJcWDy/lkbbHAve4cRAtx31Iq786U7it++wgGx"
              "btRxf8Udx7zFZsckzXaJMkA7ChG52eSkFxykJeNqsrWH5S+oxNFlD4dzVuwe8DhTSja8xxbR/Z2cOGdCbzR72rgFWhzx2V"
              "jBqJzsPLMIQKhO4DGezXehhWwE56YCE+O6c0mKZsfxVrogUvA4HELjVKWmAvtl6UnCh8jYzuVG5WSb/QEVPnP5TmcAnLH1g"
              "+s++v6d4s8m0gCw1fV5/SITLq9mhho8K3+7EPYTU8IU1bLhdxO5Nyt8C8ssinQ98Xw9Q==:"),
    "B.2.3": (RSA_PSS, "rsa-pss-sha512",
              'sig-b23=("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" '
              '"content-length");created=1618884473;keyid="test-key-rsa-pss"',
              "sig-b23=:bbN8oArOxYoyylQQUU6QYwrTuaxLwjAC9fbY2F6SVWvh0yBiMIRGOnMYwZ/5MR6fb0Kh1rIRASVxFkeGt683+qRp"
              "RRU5p2voTp768ZrCUb38K0fUxN0O0iC59DzYx8DFll5GmydPxSmme9v6ULbMFkl+V5B1TP/yPViV7KsLNmvKiLJH1pFkh/a"
              "YA2HXXZzNBXmIkoQoLd7YfW91kE9o/CCoC1xMy7JA1ipwvKvfrs65ldmlu9bpG6A9BmzhuzF8Eim5f8ui9eH8LZH896+QIF"
              "61ka39VBrohr9iyMUJpvRX2Zbhl5ZJzSRxpJyoEZAFL2FUo5fTIztsDZKEgM4cUA==:"),
    "B.2.6": (ED25519, "ed25519",
              'sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");'
              'created=1618884473;keyid="test-key-ed25519"',
              "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:"),
}


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_appendix_b_vector_verifies(name: str) -> None:
    key, alg, sig_input, signature = VECTORS[name]
    # The algorithm as the gateway picks it: key type (JWS name) and the registry name.
    cls = algorithm_for("PS256" if alg.startswith("rsa") else "Ed25519", alg)
    assert cls is not None
    headers = {**HEADERS, "Signature-Input": sig_input, "Signature": signature}
    assert signature_verifies("POST", URL, headers, key, cls)
    # A covered component changed, or a flipped signature byte: no longer valid.
    assert not signature_verifies("POST", URL, {**headers, "Signature": signature.replace("d2pm", "d2pn")
                                                .replace("bbN8", "bbN9").replace("wqcA", "wqcB")}, key, cls)
    if name != "B.2.1":  # B.2.1 covers no component at all
        assert not signature_verifies("PUT", URL, headers, key, cls)
        assert not signature_verifies("POST", URL, {**headers, "Date": "Tue, 20 Apr 2021 02:07:56 GMT"}, key, cls)


def test_hmac_is_never_an_algorithm() -> None:
    assert algorithm_for("PS256", "hmac-sha256") is None
    assert algorithm_for("PS256", "rsa-v1_5-sha256") is None
    assert algorithm_for("ES256", "ed25519") is None
    assert algorithm_for("Ed25519", None) is algorithms.ED25519


def test_rfc9530_digests() -> None:
    # RFC 9530 §2 and Appendix B.1: {"hello": "world"} with sha-256 and sha-512.
    assert content_digest(BODY) == "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    assert content_digest(BODY, "sha-512") == HEADERS["Content-Digest"]
    check_content_digest(HEADERS["Content-Digest"], BODY)
    check_content_digest("sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, md5=:AAAA:", BODY)
    cases = {
        None: "digest_missing",
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:": "digest_mismatch",  # body changed below
        "md5=:AAAA:": "digest_invalid",
        "sha-256=abc": "digest_invalid",
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, sha-256=:AA==:": "digest_invalid",
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:, sha-512=:AA==:": "digest_mismatch",
    }
    for value, reason in cases.items():
        body = BODY + b" " if reason == "digest_mismatch" and value and "sha-512" not in value else BODY
        with pytest.raises(DigestMismatchError) as err:
            check_content_digest(value, body)
        assert err.value.reason == reason, value
