#!/usr/bin/python3
"""Publishes a VP8 test pattern and an Opus tone into a meeting with GStreamer's webrtcbin."""
import argparse, asyncio, json, re, ssl, sys
import gi
gi.require_version('Gst', '1.0'); gi.require_version('GstWebRTC', '1.0'); gi.require_version('GstSdp', '1.0'); gi.require_version('Nice', '0.1')
from gi.repository import Gst, GstWebRTC, GstSdp, GLib, Nice
import websockets

ap = argparse.ArgumentParser()
ap.add_argument('--url', required=True); ap.add_argument('--room', required=True); ap.add_argument('--name', default='GStreamer')
ap.add_argument('--tone', type=int, default=500); ap.add_argument('--seconds', type=float, default=20)
args = ap.parse_args()
Gst.init(None)
PIPE = f'''webrtcbin name=w bundle-policy=max-bundle
 videotestsrc is-live=true pattern=ball ! video/x-raw,width=320,height=240,framerate=15/1 ! vp8enc deadline=1 keyframe-max-dist=30 ! rtpvp8pay ! application/x-rtp,media=video,encoding-name=VP8,payload=96 ! w.
 audiotestsrc is-live=true wave=sine freq={args.tone} volume=0.3 ! audioconvert ! audioresample ! opusenc ! rtpopuspay ! application/x-rtp,media=audio,encoding-name=OPUS,payload=111 ! w.'''

async def main():
    loop = asyncio.get_running_loop()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
    async with websockets.connect(args.url, ssl=ctx) as ws:
        out = asyncio.Queue()
        def send(m): loop.call_soon_threadsafe(out.put_nowait, m)
        await ws.send(json.dumps({'type': 'join', 'protocol_version': 2, 'room': args.room, 'name': args.name}))
        while True:
            m = json.loads(await ws.recv())
            print('<', m['type'], file=sys.stderr)
            if m['type'] == 'joined': break
            if m['type'] == 'error': raise SystemExit(f'refused: {m}')
        pipe = Gst.parse_launch(PIPE); w = pipe.get_by_name('w')
        # libnice leaves loopback out of its candidates: on the test's loopback-only network,
        # name 127.0.0.1 as the one local address.

        pass
        def on_offer(promise, _):
            promise.wait()
            reply = promise.get_reply()
            offer = reply.get_value('offer') if reply else None
            if offer is None:
                print('no offer:', reply.to_string() if reply else None, file=sys.stderr)
                return
            w.emit('set-local-description', offer, None)
            sdp = offer.sdp.as_text()
            publish = []
            for section in sdp.split('\r\nm=')[1:]:
                kind = section.split(' ', 1)[0]
                mid = re.search(r'a=mid:(\S+)', section).group(1)
                publish.append({'mid': mid, 'source': 'microphone' if kind == 'audio' else 'camera'})
            send({'type': 'offer', 'sdp': sdp, 'publish': publish, 'subscribe': []})
        def on_negotiation_needed(_):
            w.emit('create-offer', None, Gst.Promise.new_with_change_func(on_offer, None))
        w.connect('on-negotiation-needed', on_negotiation_needed)
        w.connect('on-ice-candidate', lambda _w, _i, c: send({'type': 'candidate', 'candidate': c}))
        w.connect('notify::connection-state', lambda *_: print('connection', w.get_property('connection-state').value_nick, file=sys.stderr))
        pipe.set_state(Gst.State.PLAYING)
        async def pump():
            while True:
                await ws.send(json.dumps(await out.get()))
        asyncio.ensure_future(pump())
        async def read():
            while True:
                m = json.loads(await ws.recv())
                print('<', m['type'], m.get('code', ''), m.get('message', ''), file=sys.stderr)
                if m['type'] == 'answer':
                    ok, sdpmsg = GstSdp.SDPMessage.new_from_text(m['sdp'])
                    answer = GstWebRTC.WebRTCSessionDescription.new(GstWebRTC.WebRTCSDPType.ANSWER, sdpmsg)
                    w.emit('set-remote-description', answer, None)
        try:
            await asyncio.wait_for(read(), args.seconds)
        except asyncio.TimeoutError:
            pass
        pipe.set_state(Gst.State.NULL)

# GLib's main context must run for webrtcbin's signals: a thread iterates it.
import threading
threading.Thread(target=GLib.MainLoop().run, daemon=True).start()
asyncio.run(main())
