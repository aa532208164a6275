"""The documents of a CAB meeting: its minutes as a PDF (fpdf2; the core fonts hold
Latin-1 only) and the next meeting as an iCalendar event (RFC 5545, written by hand)."""

from __future__ import annotations

from datetime import UTC, datetime

from approvals.models import CabMeeting


def _latin(text) -> str:
    text = "" if text is None else str(text)
    text = text.replace("…", "...").replace("—", "-").replace("–", "-").replace("→", "->")
    return text.encode("latin-1", "replace").decode("latin-1")


def minutes_pdf(meeting: CabMeeting, minutes: dict) -> bytes:
    """The minutes (``approvals.services.meeting_minutes``) on A4. Uncompressed: a few
    pages of text, and searchable as they are."""
    from fpdf import FPDF
    from fpdf.enums import XPos, YPos

    pdf = FPDF(format="A4")
    pdf.set_compression(False)
    pdf.set_auto_page_break(auto=True, margin=15)
    pdf.add_page()
    width = pdf.epw

    def line(text: str, size: float = 10, style: str = "") -> None:
        pdf.set_font("Helvetica", style, size)
        pdf.multi_cell(width, size * 0.55, _latin(text), align="L", new_x=XPos.LMARGIN,
                       new_y=YPos.NEXT)

    line(f"Minutes: {meeting.schedule.name}", 16, "B")
    line(f"{meeting.schedule.environment.name}, {meeting.starts_at:%Y-%m-%d %H:%M} UTC "
         f"({meeting.get_status_display().lower()}"
         f"{f', closed {meeting.closed_at:%Y-%m-%d %H:%M} UTC' if meeting.closed_at else ''})")
    pdf.ln(3)
    line("Attendees", 12, "B")
    line(", ".join(minutes["attendees"]) or "None recorded.")
    if minutes["absent"]:
        line(f"Absent: {', '.join(minutes['absent'])}")
    pdf.ln(3)
    line("Items", 12, "B")
    for item in minutes["items"]:
        decision = item["decision"] or ("deferred" if item["deferred"] else "not decided")
        by = f" by {item['decided_by']}" if item["decided_by"] else ""
        line(f"{item['change']}: {decision}{by}", 10, "B")
        if item["comment"]:
            line(f"Comment: {item['comment']}")
        if item["deferred"] and item["defer_reason"] != item["comment"]:
            line(f"Deferred: {item['defer_reason']}")
    if not minutes["items"]:
        line("No items.")
    return bytes(pdf.output())


def _escape(text: str) -> str:
    return (text.replace("\\", "\\\\").replace(";", "\\;").replace(",", "\\,")
            .replace("\n", "\\n"))


def _fold(line: str) -> list[str]:
    """RFC 5545 3.1: lines of at most 75 octets, continued with a leading space."""
    out, rest = [], line.encode()
    while len(rest) > 75:
        cut = 75 if not out else 74
        while cut and (rest[cut] & 0xC0) == 0x80:  # never split a UTF-8 character
            cut -= 1
        out.append(rest[:cut].decode())
        rest = rest[cut:]
    out.append(rest.decode())
    return [out[0], *(" " + part for part in out[1:])]


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")


def meeting_ics(meeting: CabMeeting, *, host: str, stamp: datetime,
                agenda: list[str]) -> str:
    """One VEVENT for ``meeting``, times in UTC, CRLF line ends."""
    description = "Agenda: " + (", ".join(agenda) if agenda else "to be built")
    lines = [
        "BEGIN:VCALENDAR",
        "VERSION:2.0",
        "PRODID:-//Change portal//CAB meetings//EN",
        "CALSCALE:GREGORIAN",
        "METHOD:PUBLISH",
        "BEGIN:VEVENT",
        # One UID per meeting of a schedule, the same before and after it is planned.
        f"UID:cab-{meeting.schedule_id}-{_utc(meeting.starts_at)}@{host}",
        f"DTSTAMP:{_utc(stamp)}",
        f"DTSTART:{_utc(meeting.starts_at)}",
        f"DTEND:{_utc(meeting.ends_at)}",
        f"SUMMARY:{_escape(meeting.schedule.name)}",
        f"DESCRIPTION:{_escape(description)}",
        f"ORGANIZER;CN={_escape(meeting.schedule.chair.get_username())}:"
        f"mailto:{meeting.schedule.chair.email or 'noreply@' + host}",
        "END:VEVENT",
        "END:VCALENDAR",
    ]
    return "".join(part + "\r\n" for line in lines for part in _fold(line))
