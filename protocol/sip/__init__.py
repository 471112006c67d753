"""Sans-I/O SIP: messages, URIs and (alongside) transactions, dialogs and digest auth."""

from protocol.sip.headers import Contact, CSeq, Headers, Via
from protocol.sip.message import (
    Message,
    Request,
    Response,
    SipParseError,
    StreamParser,
    make_error_response,
    make_request,
    make_response,
    parse_message,
)
from protocol.sip.uri import NameAddr, SipUri, UnsupportedUriScheme, parse_name_addr, parse_uri

__all__ = [
    "Contact",
    "CSeq",
    "Headers",
    "Message",
    "NameAddr",
    "Request",
    "Response",
    "SipParseError",
    "SipUri",
    "StreamParser",
    "UnsupportedUriScheme",
    "Via",
    "make_error_response",
    "make_request",
    "make_response",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
]
