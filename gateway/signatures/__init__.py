"""FAPI 2.0 HTTP message signatures (RFC 9421) with RFC 9530 digests: verify requests, sign responses."""

from .stage import Exchange, SignatureStage, decision_refusal, signature_header_names

__all__ = ("Exchange", "SignatureStage", "decision_refusal", "signature_header_names")
