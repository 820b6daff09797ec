"""Browser-side WHIP and WHEP clients for the tests: plain ``fetch()`` and
``RTCPeerConnection`` as a web page would write them, run in a Chromium page."""

from __future__ import annotations

from typing import Any

from sfu.access_token import mint_token
from sfu.config import DEV_API_KEY, DEV_API_SECRET

WHIP_PUBLISH_JS = """
async ({url, room, token, simulcast, stripCandidates, codec}) => {
    const stream = await navigator.mediaDevices.getUserMedia({
        video: {width: 640, height: 480, frameRate: 20}, audio: true,
    });
    const pc = new RTCPeerConnection({bundlePolicy: "max-bundle"});
    pc.addTransceiver(stream.getAudioTracks()[0], {direction: "sendonly"});
    pc.addTransceiver(stream.getVideoTracks()[0], {
        direction: "sendonly",
        sendEncodings: simulcast ? [
            {rid: "q", scaleResolutionDownBy: 4, maxBitrate: 150000},
            {rid: "h", scaleResolutionDownBy: 2, maxBitrate: 500000},
            {rid: "f", maxBitrate: 1500000},
        ] : undefined,
    });
    if (codec) {  // e.g. "video/H264": what OBS sends
        const video = pc.getTransceivers()[1];
        const codecs = RTCRtpSender.getCapabilities("video").codecs;
        video.setCodecPreferences(codecs.filter((c) => c.mimeType === codec
            && (!c.sdpFmtpLine || !c.sdpFmtpLine.includes("packetization-mode=0"))));
    }
    const state = {pc, location: null, etag: null, patches: []};
    window.whip = state;
    // One PATCH at a time, in order (end-of-candidates last), once the POST answered.
    let located;
    let chain = new Promise((resolve) => { located = resolve; });
    const patch = (fragment) => {
        chain = chain.then(async () => {
            const r = await fetch(new URL(state.location, url), {
                method: "PATCH",
                headers: {
                    "Content-Type": "application/trickle-ice-sdpfrag", "If-Match": state.etag,
                },
                body: fragment,
            });
            state.patches.push(r.status);
            if (r.status !== 204) state.patchErrors = (state.patchErrors || []).concat(
                [await r.text()]);
        });
        return chain;
    };
    const fragmentFor = (candidate) => {
        const mid = candidate ? candidate.sdpMid : pc.getTransceivers()[0].mid;
        const lines = ["m=audio 9 UDP/TLS/RTP/SAVPF 0", "a=mid:" + mid];
        lines.push(candidate ? "a=" + candidate.candidate : "a=end-of-candidates");
        return lines.join("\\r\\n") + "\\r\\n";
    };
    pc.onicecandidate = (event) => {
        const c = event.candidate && event.candidate.candidate ? event.candidate : null;
        patch(fragmentFor(c));
    };
    await pc.setLocalDescription(await pc.createOffer());
    let sdp = pc.localDescription.sdp;
    if (stripCandidates) {
        sdp = sdp.split("\\r\\n").filter((l) => !l.startsWith("a=candidate")
            && l !== "a=end-of-candidates").join("\\r\\n");
    }
    const response = await fetch(url + "/whip/" + room, {
        method: "POST",
        headers: {"Content-Type": "application/sdp", "Authorization": "Bearer " + token},
        body: sdp,
    });
    state.status = response.status;
    state.location = response.headers.get("Location");
    state.etag = response.headers.get("ETag");
    state.link = response.headers.get("Link");
    const answer = await response.text();
    await pc.setRemoteDescription({type: "answer", sdp: answer});
    located();
    return {status: state.status, location: state.location, etag: state.etag};
}
"""

WHEP_VIEW_JS = """
async ({url, room, token, participant}) => {
    const pc = new RTCPeerConnection({bundlePolicy: "max-bundle"});
    pc.addTransceiver("audio", {direction: "recvonly"});
    pc.addTransceiver("video", {direction: "recvonly"});
    const state = {pc, tracks: []};
    window.whep = state;
    pc.ontrack = (event) => state.tracks.push(event.track.kind);
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {
        if (pc.iceGatheringState === "complete") resolve();
        pc.onicegatheringstatechange = () => {
            if (pc.iceGatheringState === "complete") resolve();
        };
        setTimeout(resolve, 2000);
    });
    const query = participant ? "?participant=" + encodeURIComponent(participant) : "";
    const response = await fetch(url + "/whep/" + room + query, {
        method: "POST",
        headers: {"Content-Type": "application/sdp", "Authorization": "Bearer " + token},
        body: pc.localDescription.sdp,
    });
    state.status = response.status;
    state.location = response.headers.get("Location");
    if (response.status !== 201) return {status: response.status, body: await response.text()};
    await pc.setRemoteDescription({type: "answer", sdp: await response.text()});
    return {status: response.status, location: state.location};
}
"""

INBOUND_VIDEO_JS = """
async (name) => {
    const pc = window[name].pc;
    const stats = await pc.getStats();
    for (const s of stats.values()) {
        if (s.type === "inbound-rtp" && s.kind === "video") {
            const codec = s.codecId ? stats.get(s.codecId) : null;
            return {framesDecoded: s.framesDecoded || 0, frameWidth: s.frameWidth || 0,
                    frameHeight: s.frameHeight || 0, packetsReceived: s.packetsReceived || 0,
                    mimeType: codec ? codec.mimeType : null};
        }
    }
    return null;
}
"""

OUTBOUND_VIDEO_JS = """
async () => {
    const stats = await window.whip.pc.getStats();
    const out = [];
    for (const s of stats.values()) {
        if (s.type === "outbound-rtp" && s.kind === "video") {
            out.push({rid: s.rid || null, framesEncoded: s.framesEncoded || 0,
                      frameWidth: s.frameWidth || 0});
        }
    }
    return out;
}
"""


def token(room: str, identity: str, **grants: Any) -> str:
    """A development-key access token (the test servers run with ``--dev``)."""
    return mint_token(DEV_API_KEY, DEV_API_SECRET, room=room, identity=identity, **grants)
