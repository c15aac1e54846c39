"""The block page: real HTML, Vietnamese by default or English, worded for the group's age.

* Status **403**, or **451** (RFC 7725) when the block is mandated by law (``verdict.legal``).
* Language from ``Accept-Language`` (``vi``/``en``; anything else → ``http.default_language``).
* Tone from the group's policy: ``child`` is short, friendly and simple; ``teen``/``adult`` explain the
  category and offer a "request a review" link (``http.review_url``); with ``review_form`` every tone has a
  "blocked by mistake" form posted to the page's own origin, answered by the proxy (:mod:`.review`).
* The policy's display name in the page's language (``names`` in the policy file), else its ``name``.
* Always: the category in words, ``verdict.short_id`` (never the rule text — hashed lists must not be
  revealed), the national child-protection hotline (``http.hotline``, 111), a "report abuse" link
  (``http.report_url``) and the certificate help link (``http.ca_help_url``).
* Never: the child's address or user name, the full URL (it may carry personal tokens). Every inserted
  value is HTML-escaped; configured links must be http(s). ``Cache-Control: no-store`` and
  ``Referrer-Policy: no-referrer`` so neither a cache nor the report site learns what was blocked.

Rendering is a ``string.Template`` substitution of pre-escaped strings (~10 µs); the template is read once.
"""

from __future__ import annotations

import html
import os
import string
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from filterproxy.verdict import Reason, Verdict
from filterproxy.vocabulary import LANGUAGES

__all__ = ["BlockPageSettings", "render", "pick_language", "category_name", "LANGUAGES"]

TEMPLATE_DIR = os.path.join(os.path.dirname(__file__), "templates")

CATEGORY_NAMES: dict[str, tuple[str, str]] = {  # id → (vi, en)
    "adult": ("Nội dung người lớn", "Adult content"),
    "mixed_adult": ("Nội dung người lớn", "Adult content"),
    "lingerie": ("Đồ lót, khiêu gợi", "Lingerie and suggestive content"),
    "gambling": ("Cờ bạc, cá cược", "Gambling"),
    "violence": ("Bạo lực", "Violence"),
    "agressif": ("Bạo lực, thù hằn", "Violence and hate"),
    "drugs": ("Ma túy, chất kích thích", "Drugs"),
    "drogue": ("Ma túy, chất kích thích", "Drugs"),
    "dating": ("Hẹn hò", "Dating"),
    "social": ("Mạng xã hội", "Social networks"),
    "social_networks": ("Mạng xã hội", "Social networks"),
    "games": ("Trò chơi trực tuyến", "Online games"),
    "chat": ("Trò chuyện trực tuyến", "Online chat"),
    "bypass": ("Công cụ vượt bộ lọc", "Filter bypass tools"),
    "vpn": ("Công cụ vượt bộ lọc (VPN)", "Filter bypass tools (VPN)"),
    "doh": ("Công cụ vượt bộ lọc (DNS mã hóa)", "Filter bypass tools (encrypted DNS)"),
    "redirector": ("Công cụ vượt bộ lọc", "Filter bypass tools"),
    "malware": ("Phần mềm độc hại", "Malware"),
    "phishing": ("Lừa đảo trực tuyến", "Phishing and scams"),
    "illegal": ("Nội dung bất hợp pháp", "Illegal content"),
    "ads": ("Quảng cáo", "Advertising"),
    "publicite": ("Quảng cáo", "Advertising"),
    "shortener": ("Dịch vụ rút gọn liên kết", "Link shorteners"),
    "filehosting": ("Chia sẻ tệp", "File sharing"),
    "warez": ("Phần mềm, phim ảnh vi phạm bản quyền", "Pirated software and media"),
    "hacking": ("Tấn công mạng", "Hacking"),
    "audio-video": ("Âm thanh và video", "Audio and video"),
    "webmail": ("Thư điện tử trên web", "Webmail"),
    "sect": ("Giáo phái cực đoan", "Sects"),
    "dangerous_material": ("Vật liệu nguy hiểm", "Dangerous material"),
    "remote-control": ("Điều khiển máy tính từ xa", "Remote control"),
    "ai": ("Trí tuệ nhân tạo", "Artificial intelligence"),
    "search": ("Máy tìm kiếm", "Search engines"),
    "custom": ("Danh sách chặn của nhà trường hoặc gia đình", "Blocked by your school or family"),
    "schedule": ("Ngoài giờ được phép", "Outside allowed hours"),
    "override": ("Thầy cô hoặc quản trị viên đã chặn trang này", "Blocked by a teacher or an administrator"),
    "pause": ("Internet đang tạm dừng", "Internet paused for now"),
}

_TEXT: dict[str, dict[str, str]] = {
    "vi": {
        "title": "Trang này đã bị chặn",
        "child_heading": "Ôi! Trang này không dành cho em",
        "child_lead": (
            "Trang web này có nội dung không phù hợp với lứa tuổi của em, nên đã được chặn để giữ an toàn cho em."
        ),
        "child_next": "Em hãy quay lại trang trước. Nếu em cần trang này để học, hãy hỏi thầy cô hoặc bố mẹ nhé.",
        "child_schedule": "Bây giờ chưa phải giờ dùng trang này. Em hãy quay lại sau nhé!",
        "heading": "Trang này đã bị chặn",
        "lead": "Truy cập tới {host} đã bị chặn theo chính sách an toàn trên mạng của nhà trường hoặc gia đình.",
        "lead_legal": (
            "Truy cập tới {host} đã bị chặn theo quy định của pháp luật Việt Nam. Trang này không thể mở cho bất kỳ ai."
        ),
        "lead_error": (
            "Bộ lọc không kiểm tra được trang {host} lúc này, nên đã chặn để đảm bảo an toàn. Hãy thử lại sau ít phút."
        ),
        "lead_unknown": (
            "Thiết bị này chưa được đăng ký với bộ lọc của mạng, nên chưa thể truy cập Internet. "
            "Hãy liên hệ người quản trị mạng."
        ),
        "lead_ip": (
            "{host} là một địa chỉ IP, không phải tên trang web, nên bộ lọc không biết đó là trang nào và đã chặn "
            "để đảm bảo an toàn. Hãy mở trang bằng tên của nó (ví dụ: vi.wikipedia.org)."
        ),
        "child_lead_ip": (
            "Trang này được mở bằng một dãy số thay vì tên trang, nên đã bị chặn. Em hãy gõ tên trang web nhé."
        ),
        "category": "Danh mục: {category}",
        "schedule": "Danh mục này chỉ bị chặn trong khung giờ hiện tại ({schedule}).",
        "policy": "Chính sách áp dụng: {policy}.",
        "review": "Nếu bạn cho rằng trang này bị chặn nhầm, hãy {link} và ghi kèm mã lý do bên dưới.",
        "review_link": "yêu cầu xem xét lại",
        "form_lead": "Nếu bạn cần trang này để học hoặc nghĩ rằng nó bị chặn nhầm, hãy báo cho thầy cô:",
        "form_message": "Lời nhắn (không bắt buộc, đừng ghi tên hay thông tin cá nhân)",
        "form_send": "Gửi yêu cầu mở trang",
        "form_child": "Em cần trang này để học? Bấm nút để báo thầy cô nhé.",
        "form_child_send": "Báo thầy cô",
        "help_child": (
            "Nếu em thấy buồn, sợ hãi hoặc bị ai đó bắt nạt, làm hại, hãy gọi ngay {hotline} "
            "— Tổng đài quốc gia bảo vệ trẻ em, miễn phí, 24/7."
        ),
        "help": (
            "Cần hỗ trợ hoặc muốn báo tin về trẻ em bị xâm hại? "
            "Gọi {hotline} — Tổng đài quốc gia bảo vệ trẻ em (miễn phí, 24/7)."
        ),
        "report": "Báo cáo nội dung xâm hại trẻ em",
        "ca_help": "Thấy cảnh báo chứng chỉ trên các trang https? Cài chứng chỉ của bộ lọc",
        "reason": "Mã lý do",
        "icon_label": "Biểu tượng chặn",
    },
    "en": {
        "title": "This page is blocked",
        "child_heading": "Oops! This page isn't for you",
        "child_lead": (
            "This website has things that are not right for your age, so it has been blocked to keep you safe."
        ),
        "child_next": (
            "Please go back to the page before. If you need this page for school, ask your teacher or your parents."
        ),
        "child_schedule": "It's not time for this page right now. Come back later!",
        "heading": "This page is blocked",
        "lead": "Access to {host} has been blocked by your school's or family's online safety policy.",
        "lead_legal": (
            "Access to {host} has been blocked as required by Vietnamese law. This page cannot be opened by anyone."
        ),
        "lead_error": (
            "The filter could not check {host} right now, so it has been blocked to be safe. "
            "Please try again in a few minutes."
        ),
        "lead_unknown": (
            "This device is not registered with the network's filter, so it cannot use the Internet yet. "
            "Please contact the network administrator."
        ),
        "lead_ip": (
            "{host} is an IP address, not a website's name, so the filter cannot tell which site it is and has "
            "blocked it to be safe. Open the site by its name instead (for example: en.wikipedia.org)."
        ),
        "child_lead_ip": (
            "This page was opened with a number instead of its name, so it has been blocked. "
            "Please type the website's name instead."
        ),
        "category": "Category: {category}",
        "schedule": "This category is only blocked at this time of day ({schedule}).",
        "policy": "Policy: {policy}.",
        "review": "If you think this page was blocked by mistake, {link} and include the reason code below.",
        "review_link": "request a review",
        "form_lead": "If you need this page for school or think it was blocked by mistake, tell your teachers:",
        "form_message": "Message (optional; do not write your name or anything personal)",
        "form_send": "Ask to open this page",
        "form_child": "Do you need this page for school? Press the button to tell your teacher.",
        "form_child_send": "Tell my teacher",
        "help_child": (
            "If you feel sad or scared, or someone is bullying or hurting you, call {hotline} now "
            "— the national child protection hotline, free, 24/7."
        ),
        "help": (
            "Need help, or want to report a child being harmed? "
            "Call {hotline} — the national child protection hotline (free, 24/7)."
        ),
        "report": "Report child abuse content",
        "ca_help": "Seeing certificate warnings on https sites? Install the filter's certificate",
        "reason": "Reason code",
        "icon_label": "Blocked sign",
    },
}

_ICON = (
    '<svg class="icon" viewBox="0 0 84 84" role="img" aria-label="{label}">'
    '<circle cx="42" cy="42" r="38" fill="{fill}"/>'
    '<circle cx="42" cy="42" r="26" fill="none" stroke="#fff" stroke-width="8"/>'
    '<line x1="24" y1="60" x2="60" y2="24" stroke="#fff" stroke-width="8" stroke-linecap="round"/></svg>'
)


@dataclass(frozen=True)
class BlockPageSettings:
    """The ``http`` configuration values the page uses (validated here: links must be http(s))."""

    hotline: str = "111"
    report_url: str | None = "https://tongdai111.vn"
    review_url: str | None = None
    ca_help_url: str | None = "http://mitm.it/"
    default_language: str = "vi"
    review_form: bool = False  # the "blocked by mistake" form, posted to the proxy (http/review)

    def __post_init__(self) -> None:
        for name in ("report_url", "review_url", "ca_help_url"):
            object.__setattr__(self, name, _safe_url(getattr(self, name)))
        if self.default_language not in LANGUAGES:
            object.__setattr__(self, "default_language", "vi")

    @classmethod
    def from_config(cls, http_cfg, review_form: bool = False) -> BlockPageSettings:
        return cls(
            review_form=review_form,
            hotline=str(http_cfg.hotline),
            report_url=http_cfg.report_url,
            review_url=http_cfg.review_url,
            ca_help_url=http_cfg.ca_help_url,
            default_language=http_cfg.default_language,
        )


def _safe_url(url: str | None) -> str | None:
    """Only absolute http(s) links are shown (a ``javascript:`` link from a config typo never is)."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    return url if parts.scheme in ("http", "https") and parts.netloc else None


def pick_language(accept_language: str | None, default: str = "vi") -> str:
    """Best supported language in an ``Accept-Language`` header (q-values honoured), else ``default``."""
    if not accept_language:
        return default
    best, best_q = None, 0.0
    for part in accept_language.split(",")[:32]:
        tag, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        primary = tag.strip().lower().split("-", 1)[0]
        if primary == "*":
            primary = default
        if primary in LANGUAGES and q > best_q:
            best, best_q = primary, q
    return best or default


def category_name(category: str | None, lang: str) -> str:
    """Human name of a category id (the id itself when unknown)."""
    if not category:
        return ""
    names = CATEGORY_NAMES.get(category)
    return names[0 if lang == "vi" else 1] if names else category


def _load_template() -> string.Template:
    with open(os.path.join(TEMPLATE_DIR, "blockpage.html"), encoding="utf-8") as f:
        return string.Template(f.read())


_TEMPLATE = _load_template()
_e = html.escape


def status_for(verdict: Verdict) -> int:
    """451 for legally mandated blocks (RFC 7725), else 403."""
    return 451 if verdict.legal or verdict.reason is Reason.LEGAL else 403


def _headline(t: Mapping[str, str], reason: Reason, host_html: str, *, legal: bool, child: bool) -> tuple[str, str]:
    """(heading, lead HTML): why the page is shown, worded for the reason and the tone."""
    if reason is Reason.ERROR:
        return t["heading"], t["lead_error"].format(host=host_html)
    if reason is Reason.UNKNOWN_CLIENT:
        return t["heading"], t["lead_unknown"]
    if legal:
        return t["heading"], t["lead_legal"].format(host=host_html)
    if reason is Reason.IP_LITERAL and child:  # an address, not a name: say so, in every tone
        return t["child_heading"], t["child_lead_ip"]
    if reason is Reason.IP_LITERAL:
        return t["heading"], t["lead_ip"].format(host=host_html)
    if child:
        return t["child_heading"], t["child_lead"]
    return t["heading"], t["lead"].format(host=host_html)


def _details(
    verdict: Verdict,
    host: str,
    t: Mapping[str, str],
    *,
    lang: str,
    legal: bool,
    child: bool,
    settings: BlockPageSettings,
    policy_name: str | None,
    policy_description: str | None = None,
) -> list[str]:
    """The paragraphs under the lead: what to do (child), category, schedule, policy, review link."""
    reason = verdict.reason
    cat = category_name(verdict.category, lang)
    detail: list[str] = []
    if child and reason not in (Reason.ERROR, Reason.UNKNOWN_CLIENT):
        detail.append(f"<p>{t['child_schedule'] if reason is Reason.SCHEDULE else t['child_next']}</p>")
    if cat and reason not in (Reason.ERROR, Reason.UNKNOWN_CLIENT):
        detail.append("<p>" + t["category"].format(category=f'<span class="category">{_e(cat)}</span>') + "</p>")
    if not child and reason is Reason.SCHEDULE and verdict.schedule:
        detail.append("<p>" + t["schedule"].format(schedule=_e(verdict.schedule)) + "</p>")
    if not child and policy_name and reason not in (Reason.ERROR, Reason.UNKNOWN_CLIENT):
        detail.append("<p>" + t["policy"].format(policy=_e(policy_name)) + "</p>")
        if policy_description:  # the policy file's own words, as its administrator wrote them
            detail.append(f'<p class="description">{_e(policy_description)}</p>')
    if has_form(verdict, settings):
        detail.append(_form(verdict, host, t, child=child))
    if not child and not legal and settings.review_url and reason not in (Reason.UNKNOWN_CLIENT,):
        sep = "&" if urlsplit(settings.review_url).query else ("" if settings.review_url.endswith("?") else "?")
        href = settings.review_url + sep + urlencode({"host": host, "reason": verdict.short_id})
        link = f'<a id="review" href="{_e(href)}" rel="noreferrer">{t["review_link"]}</a>'
        detail.append("<p>" + t["review"].format(link=link) + "</p>")
    return detail


REVIEW_PATH = "/.well-known/filterproxy/review"  # answered by the proxy on every host (http/review)


def has_form(verdict: Verdict, settings: BlockPageSettings) -> bool:
    """The review form is shown when on, except for the legal list, an unknown device and a filter error."""
    return settings.review_form and status_for(verdict) != 451 and verdict.reason not in _NO_FORM


_NO_FORM = (Reason.UNKNOWN_CLIENT, Reason.ERROR)
_SELF, _NONE = "'self'", "'none'"  # the CSP's form-action: the form posts to the page's own origin


def _form(verdict: Verdict, host: str, t: Mapping[str, str], *, child: bool) -> str:
    """The "blocked by mistake" form: posted to the page's own origin, where the proxy answers it. It carries
    the host and the reason code only (never the full URL); the child tone is one button."""
    hidden = (
        f'<input type="hidden" name="host" value="{_e(host)}">'
        f'<input type="hidden" name="reason" value="{_e(verdict.short_id)}">'
    )
    if child:
        return (
            f'<form id="review-form" class="review" method="post" action="{REVIEW_PATH}"><p>{t["form_child"]}</p>'
            f'{hidden}<button type="submit">{t["form_child_send"]}</button></form>'
        )
    return (
        f'<form id="review-form" class="review" method="post" action="{REVIEW_PATH}"><p>{t["form_lead"]}</p>'
        f'{hidden}<label>{t["form_message"]}<br><textarea name="message" rows="3" cols="40" maxlength="500">'
        f'</textarea></label><br><button type="submit">{t["form_send"]}</button></form>'
    )


def _links(t: Mapping[str, str], settings: BlockPageSettings) -> list[str]:
    """The list items under the help box: report abuse, certificate help (each when configured)."""
    links: list[str] = []
    if settings.report_url:
        links.append(f'<li><a id="report" href="{_e(settings.report_url)}" rel="noreferrer">{t["report"]}</a></li>')
    if settings.ca_help_url:
        links.append(f'<li><a id="ca-help" href="{_e(settings.ca_help_url)}" rel="noreferrer">{t["ca_help"]}</a></li>')
    return links


def _headers(lang: str, verdict: Verdict, form: bool = False) -> dict[str, str]:
    """Response headers: no caching, no referrer, a locked-down CSP, and the reason's short id."""
    return {
        "Content-Type": "text/html; charset=utf-8",
        "Cache-Control": "no-store",
        "Pragma": "no-cache",
        "Content-Language": lang,
        "Vary": "Accept-Language",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
        f"form-action {_SELF if form else _NONE}; base-uri 'none'; frame-ancestors 'none'",
        "X-Filterproxy-Reason": verdict.short_id.encode("ascii", "replace").decode("ascii"),
    }


def render(
    verdict: Verdict,
    host: str,
    *,
    lang: str,
    tone: str,
    settings: BlockPageSettings,
    policy_name: str | None = None,
    policy_names: Mapping[str, str] | None = None,
    policy_description: str | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of the block page for ``verdict`` on ``host``.

    The policy is shown as ``policy_names[lang]`` (a policy's localized ``names``) when present, else
    ``policy_name`` (its default ``name``), followed by its ``description`` (not on child-tone pages).
    """
    if lang not in LANGUAGES:
        lang = settings.default_language
    if policy_names and policy_names.get(lang):
        policy_name = policy_names[lang]
    t = _TEXT[lang]
    legal = status_for(verdict) == 451
    child = tone == "child" and not legal
    host_html = f'<span class="host">{_e(host)}</span>'
    hotline = _e(settings.hotline)
    hotline_html = f'<a class="hotline" href="tel:{_e(settings.hotline.replace(" ", ""))}">{hotline}</a>'
    heading, lead = _headline(t, verdict.reason, host_html, legal=legal, child=child)
    detail = _details(
        verdict,
        host,
        t,
        lang=lang,
        legal=legal,
        child=child,
        settings=settings,
        policy_name=policy_name,
        policy_description=policy_description,
    )
    body = _TEMPLATE.substitute(
        lang=lang,
        title=_e(t["title"]),
        tone=_e(tone if tone in ("child", "teen", "adult") else "teen"),
        legal_class="legal" if legal else "",
        icon=_ICON.format(label=_e(t["icon_label"]), fill="#b42318" if legal else ("#e8590c" if child else "#1f6feb")),
        heading=_e(heading),
        lead=lead,
        detail="\n".join(detail),
        help=(t["help_child"] if child else t["help"]).format(hotline=hotline_html),
        links="\n".join(_links(t, settings)),
        reason_label=_e(t["reason"]),
        reason_id=_e(verdict.short_id),
    ).encode("utf-8")
    return status_for(verdict), _headers(lang, verdict, has_form(verdict, settings)), body
