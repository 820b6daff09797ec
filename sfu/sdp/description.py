"""SDP session descriptions (RFC 8866) as used by WebRTC (RFC 8829, JSEP).

:meth:`SessionDescription.parse` turns text into small dataclasses and ``str()`` turns
them back into text with CRLF line endings. Everything the media server negotiates is
modelled (codecs, header extensions, RIDs, simulcast, SSRCs, ICE and DTLS parameters);
any other attribute is kept verbatim in ``attributes`` so nothing is lost on a round trip.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field

DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")

# RFC 3551 static payload types that browsers offer without an a=rtpmap line.
STATIC_PAYLOAD_TYPES: dict[int, tuple[str, int, int | None]] = {
    0: ("PCMU", 8000, None),
    3: ("GSM", 8000, None),
    4: ("G723", 8000, None),
    8: ("PCMA", 8000, None),
    9: ("G722", 8000, None),
    13: ("CN", 8000, None),
    18: ("G729", 8000, None),
}

_MEDIA_FLAGS = {
    "bundle-only": "bundle_only",
    "rtcp-mux": "rtcp_mux",
    "rtcp-rsize": "rtcp_rsize",
    "extmap-allow-mixed": "extmap_allow_mixed",
    "end-of-candidates": "end_of_candidates",
}

MAX_INTEGER_DIGITS = 20
"""The longest number SDP may carry here: a 64-bit session id has 20 digits. Longer
digit strings are refused before ``int()``, whose cost grows with the length."""
MAX_LINES = 2500
"""Lines one description may have. Parsing costs 2-4 us a line: 2,500 lines bound it
near 8 ms, where a 64 KiB message of short lines would take 16 ms. Real descriptions
stay far below: 100-180 lines per browser offer, and about 1,900 lines of browser
SDP already fill the signaling's 64 KiB message limit."""
MAX_QUOTED = 80
"""Characters of an offending line or value quoted in an error message."""

_LINE = re.compile(r"[a-z]=")
_DIGITS = re.compile(r"[0-9]+")
_PAYLOAD_TYPE_DIGITS = re.compile(r"[0-9]{1,3}")
_TOKEN = re.compile(r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+")
_RID_ID = re.compile(r"[A-Za-z0-9_-]+")
_RTPMAP = re.compile(r"([^/\s]+)/([0-9]+)(?:/([0-9]+))?")
_EXTMAP = re.compile(r"([0-9]+)(?:/(sendrecv|sendonly|recvonly|inactive))?\s+(\S+)(?:\s+(.*))?")


class SdpError(ValueError):
    """A session description that cannot be parsed or negotiated."""

    def __init__(
        self, reason: str, line_number: int | None = None, line: str | None = None
    ) -> None:
        self.reason = reason
        self.line_number = line_number
        self.line = line
        message = reason
        if line_number is not None:
            message = f"line {line_number}: {reason}"
            if line is not None:
                message += f": {quoted(line)}"
        super().__init__(message)


def quoted(text: str) -> str:
    """``repr(text)``, cut to :data:`MAX_QUOTED` characters: errors echo client input."""
    if len(text) <= MAX_QUOTED:
        return repr(text)
    return repr(text[:MAX_QUOTED]) + f"... ({len(text)} characters)"


@dataclass
class Codec:
    """One RTP payload format: a=rtpmap plus its a=fmtp parameters and a=rtcp-fb values.

    ``kind`` is implied by the clock rate: every RTP video payload format runs at 90 kHz.
    """

    payload_type: int
    name: str
    clock_rate: int
    channels: int | None = None
    parameters: dict[str, str] = field(default_factory=dict)
    rtcp_feedback: list[str] = field(default_factory=list)

    @property
    def mime_type(self) -> str:
        kind = "video" if self.clock_rate == 90000 else "audio"
        return f"{kind}/{self.name}"

    @property
    def apt(self) -> int | None:
        """The payload type an rtx codec retransmits, or None."""
        value = self.parameters.get("apt")
        if value is None or not _PAYLOAD_TYPE_DIGITS.fullmatch(value):
            return None
        return int(value)

    @property
    def is_rtx(self) -> bool:
        return self.name.lower() == "rtx"


@dataclass
class HeaderExtension:
    """An a=extmap line (RFC 8285)."""

    id: int
    uri: str
    direction: str | None = None
    attributes: str = ""


@dataclass
class Rid:
    """An a=rid line (RFC 8851)."""

    id: str
    direction: str
    parameters: str = ""


@dataclass
class Simulcast:
    """An a=simulcast line (RFC 8853): per direction, streams of alternative RIDs."""

    send: list[list[str]] = field(default_factory=list)
    recv: list[list[str]] = field(default_factory=list)
    paused: set[str] = field(default_factory=set)
    """RIDs marked with "~" (initially paused)."""


@dataclass
class SsrcGroup:
    """An a=ssrc-group line (RFC 5576), e.g. FID pairing a media SSRC with its rtx SSRC."""

    semantics: str
    ssrcs: list[int]


@dataclass
class MediaSection:
    """One m= section."""

    kind: str
    port: int
    protocol: str
    formats: list[str]
    mid: str | None = None
    direction: str = "sendrecv"
    host: str | None = None
    """The c= connection address."""
    bandwidths: list[str] = field(default_factory=list)
    other_lines: list[str] = field(default_factory=list)
    """Lines other than c b a (i=, k=), verbatim."""
    codecs: list[Codec] = field(default_factory=list)
    header_extensions: list[HeaderExtension] = field(default_factory=list)
    rids: list[Rid] = field(default_factory=list)
    simulcast: Simulcast | None = None
    ssrcs: dict[int, dict[str, str]] = field(default_factory=dict)
    ssrc_groups: list[SsrcGroup] = field(default_factory=list)
    msid: str | None = None
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    ice_options: str | None = None
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    setup: str | None = None
    candidates: list[str] = field(default_factory=list)
    end_of_candidates: bool = False
    rtcp_mux: bool = False
    rtcp_rsize: bool = False
    extmap_allow_mixed: bool = False
    sctp_port: int | None = None
    max_message_size: int | None = None
    bundle_only: bool = False
    """a=bundle-only (RFC 8843): port 0, yet offered for the BUNDLE group only."""
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    """Attributes not modelled above, as (name, value) in document order."""

    def __str__(self) -> str:
        return "".join(line + "\r\n" for line in _media_lines(self))

    @property
    def rejected(self) -> bool:
        return self.port == 0

    def codec(self, payload_type: int) -> Codec | None:
        return next((c for c in self.codecs if c.payload_type == payload_type), None)

    def header_extension_ids(self) -> dict[str, int]:
        return {ext.uri: ext.id for ext in self.header_extensions}


@dataclass
class TransportInfo:
    """ICE and DTLS parameters of a media section, with session-level fallbacks applied."""

    ice_ufrag: str | None
    ice_pwd: str | None
    ice_options: str | None
    ice_lite: bool
    fingerprints: list[tuple[str, str]]
    setup: str | None
    candidates: list[str]
    end_of_candidates: bool


@dataclass
class SessionDescription:
    """A whole SDP document."""

    session_id: int
    session_version: int
    origin_username: str = "-"
    origin_address: str = "127.0.0.1"
    session_name: str = "-"
    timing: str = "0 0"
    host: str | None = None
    bandwidths: list[str] = field(default_factory=list)
    other_lines: list[str] = field(default_factory=list)
    """Session-level lines other than v o s t c b a (i=, u=, e=, ...), verbatim."""
    bundle_groups: list[list[str]] = field(default_factory=list)
    msid_semantic: str | None = None
    extmap_allow_mixed: bool = False
    ice_lite: bool = False
    ice_ufrag: str | None = None
    ice_pwd: str | None = None
    ice_options: str | None = None
    fingerprints: list[tuple[str, str]] = field(default_factory=list)
    setup: str | None = None
    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    media: list[MediaSection] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str, max_media: int | None = None) -> SessionDescription:
        """Parse ``text``; more than ``max_media`` m= sections is an error, raised as
        soon as the one too many starts."""
        return _Parser(text, max_media).parse()

    def __str__(self) -> str:
        return "".join(line + "\r\n" for line in _session_lines(self))

    def media_by_mid(self, mid: str) -> MediaSection | None:
        return next((m for m in self.media if m.mid == mid), None)

    def transport(self, media: MediaSection) -> TransportInfo:
        """ICE/DTLS parameters for ``media``, falling back to the session level."""
        return TransportInfo(
            ice_ufrag=media.ice_ufrag if media.ice_ufrag is not None else self.ice_ufrag,
            ice_pwd=media.ice_pwd if media.ice_pwd is not None else self.ice_pwd,
            ice_options=media.ice_options if media.ice_options is not None else self.ice_options,
            ice_lite=self.ice_lite,
            fingerprints=list(media.fingerprints or self.fingerprints),
            setup=media.setup if media.setup is not None else self.setup,
            candidates=list(media.candidates),
            end_of_candidates=media.end_of_candidates,
        )


# Parsing


def _split_attribute(value: str) -> tuple[str, str | None]:
    name, sep, rest = value.partition(":")
    return name, rest if sep else None


def _parse_fmtp_parameters(value: str) -> dict[str, str]:
    parameters: dict[str, str] = {}
    for item in value.split(";"):
        item = item.strip()
        if item:
            key, _, param = item.partition("=")
            parameters[key.strip()] = param.strip()
    return parameters


def _format_fmtp_parameters(parameters: dict[str, str]) -> str:
    return ";".join(f"{key}={value}" if value else key for key, value in parameters.items())


@dataclass
class _PendingMedia:
    """A media section being parsed, with codec attributes gathered by payload type."""

    section: MediaSection
    line_number: int
    mid_line: int = 0
    rtpmaps: dict[int, tuple[str, int, int | None]] = field(default_factory=dict)
    fmtps: dict[int, dict[str, str]] = field(default_factory=dict)
    feedback: dict[int, list[str]] = field(default_factory=dict)
    wildcard_feedback: list[str] = field(default_factory=list)

    def finish(self) -> MediaSection:
        section = self.section
        if "RTP" in section.protocol:
            for fmt in section.formats:
                pt = int(fmt)
                rtpmap = self.rtpmaps.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)
                if rtpmap is None:
                    continue
                name, clock_rate, channels = rtpmap
                section.codecs.append(
                    Codec(
                        payload_type=pt,
                        name=name,
                        clock_rate=clock_rate,
                        channels=channels,
                        parameters=self.fmtps.get(pt, {}),
                        rtcp_feedback=[*self.wildcard_feedback, *self.feedback.get(pt, [])],
                    )
                )
        return section


class _Parser:
    def __init__(self, text: str, max_media: int | None = None) -> None:
        self.text = text
        self.max_media = max_media
        self.line_number = 0
        self.line = ""
        self.last_content_line = 0
        self.current: _PendingMedia | None = None
        self.finished: list[_PendingMedia] = []
        self.group_lines: list[tuple[int, str, list[str]]] = []

    def error(self, reason: str) -> SdpError:
        return SdpError(reason, self.line_number, self.line)

    def integer(self, value: str, what: str) -> int:
        if not _DIGITS.fullmatch(value):
            raise self.error(f"{what} is not a non-negative integer: {quoted(value)}")
        if len(value) > MAX_INTEGER_DIGITS:
            raise self.error(f"{what} has {len(value)} digits; at most {MAX_INTEGER_DIGITS}")
        return int(value)

    def payload_type(self, value: str) -> int:
        pt = self.integer(value, "payload type")
        if pt > 127:
            raise self.error(f"payload type {pt} is out of range 0-127")
        return pt

    def ssrc(self, value: str) -> int:
        ssrc = self.integer(value, "ssrc")
        if ssrc >= 1 << 32:
            raise self.error(f"ssrc {ssrc} does not fit in 32 bits")
        return ssrc

    def lines(self) -> Iterator[tuple[str, str]]:
        for number, raw in enumerate(self.text.split("\n"), start=1):
            self.line_number = number
            self.line = raw.removesuffix("\r")
            if not self.line.strip():
                continue
            self.last_content_line = number
            if not _LINE.match(self.line):
                raise self.error("not a <type>=<value> line")
            yield self.line[0], self.line[2:]

    def parse(self) -> SessionDescription:
        if not self.text.strip():
            raise SdpError("empty session description", 1)
        if self.text.count("\n") >= MAX_LINES:
            raise SdpError(f"more than {MAX_LINES} lines")
        lines = self.lines()
        line_type, value = next(lines)
        if (line_type, value.strip()) != ("v", "0"):
            raise self.error("the first line must be v=0")
        session: SessionDescription | None = None
        for line_type, value in lines:
            if line_type == "o":
                if session is not None:
                    raise self.error("a second o= line")
                session = self.parse_origin(value)
            elif session is None:
                raise self.error("expected the o= line after v=0")
            elif line_type == "m":
                self.start_media(value)
            elif line_type == "a":
                if self.current is None:
                    self.session_attribute(session, value)
                else:
                    self.media_attribute(self.current, value)
            elif line_type == "c":
                host = self.parse_connection(value)
                if self.current is None:
                    session.host = host
                else:
                    self.current.section.host = host
            elif line_type == "b":
                target = session if self.current is None else self.current.section
                target.bandwidths.append(value)
            elif self.current is not None:
                self.current.section.other_lines.append(f"{line_type}={value}")
            elif line_type == "s":
                session.session_name = value
            elif line_type == "t":
                session.timing = value
            else:
                session.other_lines.append(f"{line_type}={value}")
        if session is None:
            raise SdpError("missing o= line", self.last_content_line + 1)
        if self.current is not None:
            self.finished.append(self.current)
        session.media = [pending.finish() for pending in self.finished]
        self.check_mids(session)
        return session

    def parse_origin(self, value: str) -> SessionDescription:
        parts = value.split()
        if len(parts) != 6 or parts[3] != "IN" or parts[4] not in ("IP4", "IP6"):
            raise self.error("o= must be '<user> <sess-id> <sess-version> IN IP4|IP6 <address>'")
        return SessionDescription(
            origin_username=parts[0],
            session_id=self.integer(parts[1], "session id"),
            session_version=self.integer(parts[2], "session version"),
            origin_address=parts[5],
        )

    def parse_connection(self, value: str) -> str:
        parts = value.split()
        if len(parts) != 3 or parts[0] != "IN" or parts[1] not in ("IP4", "IP6"):
            raise self.error("c= must be 'IN IP4|IP6 <address>'")
        return parts[2]

    def start_media(self, value: str) -> None:
        if self.current is not None:
            self.finished.append(self.current)
        if self.max_media is not None and len(self.finished) >= self.max_media:
            raise self.error(f"more than {self.max_media} m= sections")
        parts = value.split()
        if len(parts) < 4:
            raise self.error("m= needs <media> <port> <proto> <fmt> ...")
        kind, port, protocol, formats = parts[0], parts[1], parts[2], parts[3:]
        if "RTP" in protocol:
            formats = [str(self.payload_type(fmt)) for fmt in formats]
            if len(set(formats)) != len(formats):
                raise self.error("a payload type is listed twice on the m= line")
        port_number = self.integer(port, "port")
        if port_number > 65535:
            raise self.error(f"port {port_number} is out of range")
        section = MediaSection(kind=kind, port=port_number, protocol=protocol, formats=formats)
        self.current = _PendingMedia(section, self.line_number)

    def session_attribute(self, session: SessionDescription, value: str) -> None:
        name, arg = _split_attribute(value)
        if name == "group" and arg is not None:
            semantics, *mids = arg.split() or [""]
            if not _TOKEN.fullmatch(semantics):
                raise self.error("group needs '<semantics> <mid> ...'")
            if semantics == "BUNDLE":
                self.group_lines.append((self.line_number, self.line, mids))
                session.bundle_groups.append(mids)
                return
        elif name == "msid-semantic" and arg is not None:
            session.msid_semantic = arg.strip()
            return
        elif name == "ice-lite" and arg is None:
            session.ice_lite = True
            return
        elif name == "extmap-allow-mixed" and arg is None:
            session.extmap_allow_mixed = True
            return
        elif self.transport_attribute(session, name, arg):
            return
        session.attributes.append((name, arg))

    def transport_attribute(
        self, target: SessionDescription | MediaSection, name: str, arg: str | None
    ) -> bool:
        if arg is None:
            return False
        if name == "ice-ufrag":
            target.ice_ufrag = arg
        elif name == "ice-pwd":
            target.ice_pwd = arg
        elif name == "ice-options":
            target.ice_options = arg
        elif name == "setup":
            target.setup = arg
        elif name == "fingerprint":
            algorithm, _, fingerprint = arg.partition(" ")
            if not algorithm or not fingerprint.strip():
                raise self.error("fingerprint needs '<hash-function> <fingerprint>'")
            target.fingerprints.append((algorithm, fingerprint.strip()))
        else:
            return False
        return True

    def media_attribute(self, pending: _PendingMedia, value: str) -> None:
        section = pending.section
        name, arg = _split_attribute(value)
        if arg is None:
            consumed = self.media_flag(section, name)
        elif name == "mid":
            if section.mid is not None:
                raise self.error("a second a=mid in one media section")
            section.mid = arg
            pending.mid_line = self.line_number
            consumed = True
        else:
            consumed = self.transport_attribute(section, name, arg) or self.media_value(
                pending, name, arg
            )
        if not consumed:
            section.attributes.append((name, arg))

    def media_flag(self, section: MediaSection, name: str) -> bool:
        if name in DIRECTIONS:
            section.direction = name
        elif name in _MEDIA_FLAGS:
            setattr(section, _MEDIA_FLAGS[name], True)
        else:
            return False
        return True

    def media_value(self, pending: _PendingMedia, name: str, arg: str) -> bool:
        section = pending.section
        if name == "msid" and section.msid is None:
            section.msid = arg
        elif name == "candidate":
            section.candidates.append(arg)
        elif name == "rtpmap":
            self.parse_rtpmap(pending, arg)
        elif name == "fmtp":
            return self.parse_fmtp(pending, arg)
        elif name == "rtcp-fb":
            return self.parse_rtcp_fb(pending, arg)
        elif name == "extmap":
            self.parse_extmap(section, arg)
        elif name == "rid":
            self.parse_rid(section, arg)
        elif name == "simulcast":
            self.parse_simulcast(section, arg)
        elif name == "ssrc":
            self.parse_ssrc(section, arg)
        elif name == "ssrc-group":
            self.parse_ssrc_group(section, arg)
        elif name == "sctp-port":
            section.sctp_port = self.integer(arg.strip(), "sctp-port")
        elif name == "max-message-size":
            section.max_message_size = self.integer(arg.strip(), "max-message-size")
        else:
            return False
        return True

    def pt_on_m_line(self, pending: _PendingMedia, value: str) -> int | None:
        pt = self.payload_type(value)
        return pt if str(pt) in pending.section.formats else None

    def parse_rtpmap(self, pending: _PendingMedia, arg: str) -> None:
        pt_text, _, encoding = arg.partition(" ")
        pt = self.pt_on_m_line(pending, pt_text)
        if pt is None:
            raise self.error(f"a=rtpmap for payload type {pt_text} which is not on the m= line")
        match = _RTPMAP.fullmatch(encoding.strip())
        if match is None:
            raise self.error("rtpmap needs '<pt> <name>/<clock rate>[/<channels>]'")
        if pt in pending.rtpmaps:
            raise self.error(f"a second a=rtpmap for payload type {pt}")
        channels = self.integer(match[3], "channels") if match[3] is not None else None
        pending.rtpmaps[pt] = (match[1], self.integer(match[2], "clock rate"), channels)

    def parse_fmtp(self, pending: _PendingMedia, arg: str) -> bool:
        pt_text, _, parameters = arg.partition(" ")
        if not parameters.strip():
            raise self.error("fmtp needs '<pt> <parameters>'")
        pt = self.pt_on_m_line(pending, pt_text)
        if pt is None:
            return False
        if pt in pending.fmtps:
            raise self.error(f"a second a=fmtp for payload type {pt}")
        pending.fmtps[pt] = _parse_fmtp_parameters(parameters)
        return True

    def parse_rtcp_fb(self, pending: _PendingMedia, arg: str) -> bool:
        pt_text, _, feedback = arg.partition(" ")
        feedback = " ".join(feedback.split())
        if not feedback:
            raise self.error("rtcp-fb needs '<pt> <feedback>'")
        if pt_text == "*":
            pending.wildcard_feedback.append(feedback)
            return True
        pt = self.pt_on_m_line(pending, pt_text)
        if pt is None:
            return False
        pending.feedback.setdefault(pt, []).append(feedback)
        return True

    def parse_extmap(self, section: MediaSection, arg: str) -> None:
        match = _EXTMAP.fullmatch(arg.strip())
        if match is None:
            raise self.error("extmap needs '<id>[/<direction>] <uri> [<attributes>]'")
        ext_id = self.integer(match[1], "extmap id")
        if not (1 <= ext_id <= 255 or 4096 <= ext_id <= 4351):
            raise self.error(f"extmap id {ext_id} is out of range")
        if any(ext.id == ext_id for ext in section.header_extensions):
            raise self.error(f"a second a=extmap with id {ext_id}")
        section.header_extensions.append(
            HeaderExtension(ext_id, match[3], match[2], (match[4] or "").strip())
        )

    def parse_rid(self, section: MediaSection, arg: str) -> None:
        parts = arg.split(maxsplit=2)
        if len(parts) < 2 or not _RID_ID.fullmatch(parts[0]) or parts[1] not in ("send", "recv"):
            raise self.error("rid needs '<rid-id> send|recv [<restrictions>]'")
        if any(rid.id == parts[0] for rid in section.rids):
            raise self.error(f"a second a=rid with id {quoted(parts[0])}")
        section.rids.append(Rid(parts[0], parts[1], parts[2] if len(parts) > 2 else ""))

    def parse_simulcast(self, section: MediaSection, arg: str) -> None:
        parts = arg.split()
        if section.simulcast is not None or not parts or len(parts) % 2 or len(parts) > 4:
            raise self.error("simulcast needs 'send|recv <streams> [send|recv <streams>]'")
        simulcast = Simulcast()
        for direction, streams in zip(parts[::2], parts[1::2], strict=True):
            if direction not in ("send", "recv") or getattr(simulcast, direction):
                raise self.error(f"bad simulcast direction {quoted(direction)}")
            target: list[list[str]] = getattr(simulcast, direction)
            for stream in streams.split(";"):
                alternatives: list[str] = []
                for rid in stream.split(","):
                    paused = rid.startswith("~")
                    rid = rid.removeprefix("~")
                    if not _RID_ID.fullmatch(rid):
                        raise self.error(f"bad rid {quoted(rid)} in simulcast")
                    if paused:
                        simulcast.paused.add(rid)
                    alternatives.append(rid)
                target.append(alternatives)
        section.simulcast = simulcast

    def parse_ssrc(self, section: MediaSection, arg: str) -> None:
        ssrc_text, _, attribute = arg.partition(" ")
        if not attribute.strip():
            raise self.error("ssrc needs '<ssrc> <attribute>[:<value>]'")
        name, _, value = attribute.strip().partition(":")
        section.ssrcs.setdefault(self.ssrc(ssrc_text), {})[name] = value

    def parse_ssrc_group(self, section: MediaSection, arg: str) -> None:
        semantics, *ssrcs = arg.split() or [""]
        if not _TOKEN.fullmatch(semantics) or not ssrcs:
            raise self.error("ssrc-group needs '<semantics> <ssrc> ...'")
        section.ssrc_groups.append(SsrcGroup(semantics, [self.ssrc(s) for s in ssrcs]))

    def check_mids(self, session: SessionDescription) -> None:
        seen: set[str] = set()
        for pending in self.finished:
            mid = pending.section.mid
            if mid is None:
                if session.bundle_groups:
                    raise SdpError(
                        "media section without a=mid in a BUNDLE session", pending.line_number
                    )
                continue
            if mid in seen:
                raise SdpError(f"duplicate mid {quoted(mid)}", pending.mid_line)
            seen.add(mid)
        grouped: set[str] = set()
        for line_number, line, mids in self.group_lines:
            for mid in mids:
                if mid not in seen:
                    raise SdpError(
                        f"BUNDLE group names unknown mid {quoted(mid)}", line_number, line
                    )
                if mid in grouped:
                    raise SdpError(f"mid {quoted(mid)} is in two BUNDLE groups", line_number, line)
                grouped.add(mid)


# Serializing


def _attribute(name: str, value: str | None) -> str:
    return f"a={name}" if value is None else f"a={name}:{value}"


def _transport_lines(target: SessionDescription | MediaSection) -> Iterator[str]:
    if target.ice_ufrag is not None:
        yield f"a=ice-ufrag:{target.ice_ufrag}"
    if target.ice_pwd is not None:
        yield f"a=ice-pwd:{target.ice_pwd}"
    if target.ice_options is not None:
        yield f"a=ice-options:{target.ice_options}"
    for algorithm, fingerprint in target.fingerprints:
        yield f"a=fingerprint:{algorithm} {fingerprint}"
    if target.setup is not None:
        yield f"a=setup:{target.setup}"


def _session_lines(session: SessionDescription) -> Iterator[str]:
    address_type = "IP6" if ":" in session.origin_address else "IP4"
    yield "v=0"
    yield (
        f"o={session.origin_username} {session.session_id} {session.session_version}"
        f" IN {address_type} {session.origin_address}"
    )
    yield f"s={session.session_name}"
    yield from session.other_lines
    if session.host is not None:
        yield _connection(session.host)
    for bandwidth in session.bandwidths:
        yield f"b={bandwidth}"
    yield f"t={session.timing}"
    if session.ice_lite:
        yield "a=ice-lite"
    for group in session.bundle_groups:
        yield "a=group:BUNDLE " + " ".join(group)
    if session.extmap_allow_mixed:
        yield "a=extmap-allow-mixed"
    if session.msid_semantic is not None:
        yield f"a=msid-semantic: {session.msid_semantic}"
    yield from _transport_lines(session)
    for name, value in session.attributes:
        yield _attribute(name, value)
    for media in session.media:
        yield from _media_lines(media)


def _connection(host: str) -> str:
    return f"c=IN {'IP6' if ':' in host else 'IP4'} {host}"


def _simulcast_value(simulcast: Simulcast) -> str:
    parts = []
    for direction in ("send", "recv"):
        streams: list[list[str]] = getattr(simulcast, direction)
        if streams:
            text = ";".join(
                ",".join("~" + rid if rid in simulcast.paused else rid for rid in stream)
                for stream in streams
            )
            parts.append(f"{direction} {text}")
    return " ".join(parts)


def _media_lines(media: MediaSection) -> Iterator[str]:
    yield f"m={media.kind} {media.port} {media.protocol} {' '.join(media.formats)}"
    yield from media.other_lines
    if media.host is not None:
        yield _connection(media.host)
    for bandwidth in media.bandwidths:
        yield f"b={bandwidth}"
    for candidate in media.candidates:
        yield f"a=candidate:{candidate}"
    if media.end_of_candidates:
        yield "a=end-of-candidates"
    if media.bundle_only:
        yield "a=bundle-only"
    yield from _transport_lines(media)
    if media.mid is not None:
        yield f"a=mid:{media.mid}"
    if media.extmap_allow_mixed:
        yield "a=extmap-allow-mixed"
    for ext in media.header_extensions:
        direction = f"/{ext.direction}" if ext.direction else ""
        attributes = f" {ext.attributes}" if ext.attributes else ""
        yield f"a=extmap:{ext.id}{direction} {ext.uri}{attributes}"
    yield f"a={media.direction}"
    if media.msid is not None:
        yield f"a=msid:{media.msid}"
    if media.rtcp_mux:
        yield "a=rtcp-mux"
    if media.rtcp_rsize:
        yield "a=rtcp-rsize"
    for codec in media.codecs:
        channels = f"/{codec.channels}" if codec.channels is not None else ""
        yield f"a=rtpmap:{codec.payload_type} {codec.name}/{codec.clock_rate}{channels}"
        for feedback in codec.rtcp_feedback:
            yield f"a=rtcp-fb:{codec.payload_type} {feedback}"
        if codec.parameters:
            yield f"a=fmtp:{codec.payload_type} {_format_fmtp_parameters(codec.parameters)}"
    for rid in media.rids:
        yield f"a=rid:{rid.id} {rid.direction}" + (f" {rid.parameters}" if rid.parameters else "")
    if media.simulcast is not None:
        yield f"a=simulcast:{_simulcast_value(media.simulcast)}"
    if media.sctp_port is not None:
        yield f"a=sctp-port:{media.sctp_port}"
    if media.max_message_size is not None:
        yield f"a=max-message-size:{media.max_message_size}"
    for name, value in media.attributes:
        yield _attribute(name, value)
    for group in media.ssrc_groups:
        yield f"a=ssrc-group:{group.semantics} " + " ".join(str(s) for s in group.ssrcs)
    for ssrc, ssrc_attributes in media.ssrcs.items():
        for name, value in ssrc_attributes.items():
            yield f"a=ssrc:{ssrc} {name}:{value}" if value else f"a=ssrc:{ssrc} {name}"
