"""Chatwoot webhook payloads, shaped as Chatwoot (v4) sends them.

message_created is Message#webhook_data plus "event"; conversation events are
Conversation#webhook_data plus "event" (and "changed_attributes"). In the
message payload message_type is a string and created_at an ISO time; inside
conversation.messages[] message_type is an integer and created_at unix time.
A contact sender has no "type"; agents are "user", agent bots "agent_bot",
Captain "captain_assistant". Every builder returns a plain dict; tests send
it with fake_chatwoot.send_webhook().
"""

import itertools
import time

ACCOUNT = {"id": 1, "name": "Acme Kft."}
INBOX = {"id": 1, "name": "Webshop chat"}
EMAIL_INBOX = {"id": 2, "name": "Support e-mail"}

_ids = itertools.count(1000)


def next_id():
    return next(_ids)


def iso(t=None):
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + ".%03dZ" % int((t % 1) * 1000)


def contact(contact_id=7, name="Kiss Anna", email="anna@example.com"):
    return {"id": contact_id, "name": name, "avatar": "", "identifier": None, "email": email,
            "phone_number": None, "thumbnail": "", "additional_attributes": {}, "custom_attributes": {}}


def agent(agent_id=3, name="Nagy Péter"):
    return {"id": agent_id, "name": name, "email": "peter@acme.example", "available_name": name,
            "avatar_url": "", "type": "user", "availability_status": "online", "thumbnail": ""}


def agent_bot(bot_id=9, name="Kokó"):
    return {"id": bot_id, "name": name, "avatar_url": "", "type": "agent_bot"}


def captain(assistant_id=4, name="Captain"):
    return {"id": assistant_id, "name": name, "avatar_url": "", "type": "captain_assistant"}


def conversation(conv_id, status="pending", inbox=INBOX, contact_id=7, assignee=None, labels=None,
                 channel="Channel::WebWidget", additional_attributes=None, team=None):
    """Conversation#webhook_data."""
    now = int(time.time())
    return {
        "additional_attributes": additional_attributes or {},
        "can_reply": True,
        "channel": channel,
        "contact_inbox": {"id": 40 + contact_id, "contact_id": contact_id, "inbox_id": inbox["id"],
                          "source_id": "b1f2c3", "hmac_verified": False, "pubsub_token": "x"},
        "id": conv_id,
        "inbox_id": inbox["id"],
        "messages": [],
        "labels": list(labels or []),
        "meta": {
            "sender": contact(contact_id),
            "assignee": assignee,
            "assignee_type": "User" if assignee else None,
            "team": team,
            "hmac_verified": False,
        },
        "status": status,
        "custom_attributes": {},
        "snoozed_until": None,
        "unread_count": 1,
        "first_reply_created_at": None,
        "priority": None,
        "waiting_since": now,
        "agent_last_seen_at": 0,
        "contact_last_seen_at": 0,
        "last_activity_at": now,
        "timestamp": now,
        "created_at": now - 60,
        "updated_at": float(now),
    }


def _message(msg_id, conv, content, message_type, sender, private=False, content_type="text",
             content_attributes=None, additional_attributes=None, attachments=None, inbox=INBOX,
             account=ACCOUNT, created_at=None):
    msg = {
        "account": dict(account),
        "additional_attributes": additional_attributes or {},
        "content_attributes": content_attributes or {},
        "content_type": content_type,
        "content": content,
        "conversation": conv,
        "created_at": iso(created_at),
        "id": msg_id,
        "inbox": dict(inbox),
        "message_type": message_type,
        "private": private,
        "sender": sender,
        "source_id": None,
        "event": "message_created",
    }
    if attachments is not None:
        msg["attachments"] = attachments
    conv["messages"] = [{"id": msg_id, "content": content, "account_id": account["id"], "inbox_id": inbox["id"],
                         "conversation_id": conv["id"], "message_type": ["incoming", "outgoing", "activity",
                                                                         "template"].index(message_type),
                         "created_at": int(time.time()), "private": private, "content_type": content_type,
                         "source_id": None, "sender": sender}]
    return msg


def contact_message(content, conv_id=1, msg_id=None, status="pending", contact_id=7, labels=None,
                    inbox=INBOX, assignee=None, attachments=None, account=ACCOUNT):
    conv = conversation(conv_id, status=status, inbox=inbox, contact_id=contact_id, labels=labels,
                        assignee=assignee)
    return _message(msg_id or next_id(), conv, content, "incoming", contact(contact_id), inbox=inbox,
                    attachments=attachments, account=account)


def agent_message(content, conv_id=1, msg_id=None, status="open", agent_id=3):
    """A human agent's reply: outgoing, sender type user."""
    conv = conversation(conv_id, status=status, assignee=agent(agent_id))
    return _message(msg_id or next_id(), conv, content, "outgoing", agent(agent_id))


def agent_bot_message(content, conv_id=1, msg_id=None, status="pending"):
    conv = conversation(conv_id, status=status)
    return _message(msg_id or next_id(), conv, content, "outgoing", agent_bot())


def captain_message(content, conv_id=1, msg_id=None, status="pending"):
    conv = conversation(conv_id, status=status)
    return _message(msg_id or next_id(), conv, content, "outgoing", captain())


def private_note(content, conv_id=1, msg_id=None, status="pending"):
    """An agent's private note: Chatwoot delivers these to webhooks too."""
    conv = conversation(conv_id, status=status)
    return _message(msg_id or next_id(), conv, content, "outgoing", agent(), private=True)


def activity_message(content="Conversation was marked resolved by Nagy Péter", conv_id=1, msg_id=None,
                     status="pending"):
    conv = conversation(conv_id, status=status)
    return _message(msg_id or next_id(), conv, content, "activity", None)


def email_message(content, conv_id=1, msg_id=None, subject="Kérdés a szállításról",
                  from_addr="anna@example.com", headers=None, auto_reply=None, content_type=None,
                  status="pending", conv_auto_reply=None):
    """An e-mail inbox message: content_type incoming_email, content_attributes.email."""
    email = {
        "bcc": None, "cc": None, "date": iso(), "from": [from_addr], "html_content": {},
        "in_reply_to": None, "message_id": "m%d@example.com" % next_id(), "multipart": True,
        "number_of_attachments": 0, "subject": subject, "text_content": {"full": content},
        "to": ["support@acme.example"], "content_type": content_type or "multipart/alternative",
    }
    if headers is not None:
        email["headers"] = headers
    if auto_reply is not None:
        email["auto_reply"] = auto_reply
    attrs = {"mail_subject": subject, "source": "email", "in_reply_to": None}
    if conv_auto_reply is not None:
        attrs["auto_reply"] = conv_auto_reply
    conv = conversation(conv_id, status=status, inbox=EMAIL_INBOX, channel="Channel::Email",
                        additional_attributes=attrs)
    return _message(msg_id or next_id(), conv, content, "incoming", contact(), content_type="incoming_email",
                    content_attributes={"email": email}, inbox=EMAIL_INBOX)


def voice_note(conv_id=1, msg_id=None, base_url="http://127.0.0.1:3000", status="pending"):
    """A contact's voice message: an audio attachment with a signed data_url."""
    mid = msg_id or next_id()
    att = {"id": mid + 1, "message_id": mid, "file_type": "audio", "account_id": ACCOUNT["id"], "extension": "ogg",
           "data_url": base_url + "/rails/active_storage/blobs/redirect/eyJfcmFpbHMiOnt9--abc/voice.ogg",
           "thumb_url": "", "file_size": 23117, "content_type": "audio/ogg"}
    conv = conversation(conv_id, status=status)
    return _message(mid, conv, None, "incoming", contact(), attachments=[att])


def image_message(content, conv_id=1, msg_id=None, base_url="http://127.0.0.1:3000", status="pending"):
    mid = msg_id or next_id()
    att = {"id": mid + 1, "message_id": mid, "file_type": "image", "account_id": ACCOUNT["id"], "extension": "jpg",
           "data_url": base_url + "/rails/active_storage/blobs/redirect/eyJfcmFpbHMiOnt9--def/photo.jpg",
           "thumb_url": "", "file_size": 80211}
    conv = conversation(conv_id, status=status)
    return _message(mid, conv, content, "incoming", contact(), attachments=[att])


def conversation_event(event, conv_id=1, status="open", assignee=None, previous="pending", labels=None):
    """conversation_status_changed / conversation_updated / conversation_opened / conversation_resolved."""
    payload = conversation(conv_id, status=status, assignee=assignee, labels=labels)
    payload["event"] = event
    if event in ("conversation_status_changed", "conversation_updated"):
        payload["changed_attributes"] = [{"status": {"previous_value": previous, "current_value": status}}]
    return payload


def status_changed(conv_id, status, assignee=None, previous="pending"):
    return conversation_event("conversation_status_changed", conv_id, status, assignee, previous)


# Each e-mail loop-prevention rule, as (name, email_message keyword arguments).
BOUNCE_CASES = [
    ("subject undelivered", {"subject": "Undelivered Mail Returned to Sender"}),
    ("subject mailer-daemon", {"subject": "Message from MAILER-DAEMON"}),
    ("subject delivery failed", {"subject": "Delivery failed: Kérdés"}),
    ("subject delivery failure", {"subject": "Delivery Status Notification (Failure)"}),
    ("subject returned mail", {"subject": "Returned mail: see transcript for details"}),
    ("subject bounced", {"subject": "Bounced message"}),
    ("subject out of office", {"subject": "Out of Office: Re: Kérdés"}),
    ("subject auto-reply", {"subject": "Auto-Reply: Kérdés"}),
    ("subject automatic reply", {"subject": "Automatic reply: Kérdés"}),
    ("subject kézbesítési hiba", {"subject": "Kézbesítési hiba: Kérdés"}),
    ("subject nem kézbesíthető", {"subject": "Nem kézbesíthető üzenet"}),
    ("subject házon kívül", {"subject": "Házon kívül: Re: Kérdés"}),
    ("subject automatikus válasz", {"subject": "Automatikus válasz: Kérdés"}),
    ("subject szabadságon", {"subject": "Szabadságon vagyok"}),
    ("sender mailer-daemon", {"from_addr": "MAILER-DAEMON@mx.example.com"}),
    ("sender postmaster", {"from_addr": "postmaster@example.com"}),
    ("sender noreply", {"from_addr": "noreply@shop.example"}),
    ("sender no-reply", {"from_addr": "no-reply@shop.example"}),
    ("sender do-not-reply", {"from_addr": "do-not-reply@shop.example"}),
    ("email auto_reply flag", {"auto_reply": True}),
    ("conversation auto_reply flag", {"conv_auto_reply": True}),
    ("header Auto-Submitted", {"headers": {"Auto-Submitted": "auto-replied"}}),
    ("header X-Autoreply", {"headers": {"X-Autoreply": "yes"}}),
    ("header X-Autorespond", {"headers": {"X-Autorespond": "vacation"}}),
    ("header X-Auto-Response-Suppress", {"headers": {"X-Auto-Response-Suppress": "All"}}),
    ("header Precedence bulk", {"headers": {"Precedence": "bulk"}}),
    ("header Precedence junk", {"headers": {"Precedence": "junk"}}),
    ("header Precedence list", {"headers": {"Precedence": "list"}}),
    ("header Precedence auto_reply", {"headers": {"Precedence": "auto_reply"}}),
    ("header List-Id", {"headers": {"List-Id": "<news.shop.example>"}}),
    ("header List-Unsubscribe", {"headers": {"List-Unsubscribe": "<mailto:unsub@shop.example>"}}),
    ("header Return-Path empty", {"headers": {"Return-Path": "<>"}}),
    ("delivery-status report", {"content_type": "multipart/report; report-type=delivery-status; boundary=x"}),
]
