// Every user-facing string of the web client, in English and Vietnamese.
//
// Nothing else in the client holds text meant for people: markup names keys with
// `data-i18n` (text), `data-i18n-title` (tooltip and accessible label) and
// `data-i18n-placeholder`; scripts call `t(key, vars)`. The two tables must have the same
// keys (checked by web-client/tests/unit.test.mjs).

export const STRINGS = {
  en: {
    'app.title': 'Meet',
    'lang.label': 'Language',

    'lobby.heading': 'Join a meeting',
    'lobby.subtitle': 'Check your camera and microphone, then join.',
    'lobby.room': 'Meeting room',
    'lobby.roomPlaceholder': 'e.g. province-council',
    'lobby.name': 'Your name',
    'lobby.namePlaceholder': 'e.g. Lào Cai office',
    'lobby.camera': 'Camera',
    'lobby.microphone': 'Microphone',
    'lobby.speaker': 'Speaker',
    'lobby.noDevice': 'None available',
    'lobby.defaultDevice': 'Default',
    'lobby.join': 'Join now',
    'lobby.joining': 'Joining…',
    'lobby.previewOff': 'Camera is off',
    'lobby.receiveOnly': 'You will join without camera and microphone: you can still watch and listen.',
    'lobby.left': 'You left the meeting.',
    'lobby.invalid': 'Enter a meeting room and your name (1 to 64 characters each).',

    'call.you': '{name} (you)',
    'call.screenOf': '{name} is presenting',
    'call.count': '{count} in the meeting',
    'call.alone': 'You are the only one here. Others appear as soon as they join.',
    'call.reconnecting': 'Reconnecting…',
    'call.reconnectingDetail': 'The connection was interrupted. Restoring it, please wait.',
    'call.joinedToast': '{name} joined',
    'call.leftToast': '{name} left',

    'toolbar.micMute': 'Turn off microphone',
    'toolbar.micUnmute': 'Turn on microphone',
    'toolbar.camOff': 'Turn off camera',
    'toolbar.camOn': 'Turn on camera',
    'toolbar.share': 'Present your screen',
    'toolbar.stopShare': 'Stop presenting',
    'toolbar.leave': 'Leave the meeting',

    'tile.micOff': 'Microphone off',

    'quality.good': 'Good connection',
    'quality.fair': 'Fair connection',
    'quality.poor': 'Poor connection',
    'quality.unknown': 'Measuring connection…',
    'quality.detail': 'loss {loss}% · jitter {jitter} ms · round trip {rtt} ms',

    'error.unsupported': 'This browser cannot join meetings. Use a current version of Chrome, Edge or Firefox.',
    'error.unreachable': 'Cannot reach the meeting server. Check your network connection and try again.',
    'error.connectionLost': 'The connection to the meeting was lost and could not be restored. Check your network and join again.',
    'error.roomClosed': 'The meeting has ended: the server closed it.',
    'error.versionMismatch': 'This page does not match the server’s version. Reload the page (Ctrl+F5) to get the current version.',
    'error.mediaFailed': 'Connected to the server, but audio and video cannot get through. A firewall may be blocking the media port (UDP).',
    'error.roomFull': 'This meeting room is full.',
    'error.invalidName': 'The room or name is not allowed: use 1 to 64 printable characters.',
    'error.server': 'The server refused the request ({code}).',
    'error.permissionDenied': 'Camera and microphone are blocked. You can still join to watch and listen; to be seen and heard, allow them in the browser’s site settings.',
    'error.noDevices': 'No camera or microphone was found. You can still join to watch and listen.',
    'error.deviceBusy': 'The camera or microphone is in use by another program.',
    'error.shareFailed': 'Screen sharing could not start.',
  },

  vi: {
    'app.title': 'Họp trực tuyến',
    'lang.label': 'Ngôn ngữ',

    'lobby.heading': 'Tham gia cuộc họp',
    'lobby.subtitle': 'Kiểm tra camera và micrô, sau đó tham gia.',
    'lobby.room': 'Phòng họp',
    'lobby.roomPlaceholder': 'ví dụ: hoi-dong-tinh',
    'lobby.name': 'Tên của bạn',
    'lobby.namePlaceholder': 'ví dụ: Văn phòng Lào Cai',
    'lobby.camera': 'Camera',
    'lobby.microphone': 'Micrô',
    'lobby.speaker': 'Loa',
    'lobby.noDevice': 'Không có thiết bị',
    'lobby.defaultDevice': 'Mặc định',
    'lobby.join': 'Tham gia ngay',
    'lobby.joining': 'Đang tham gia…',
    'lobby.previewOff': 'Camera đang tắt',
    'lobby.receiveOnly': 'Bạn sẽ tham gia mà không có camera và micrô: bạn vẫn xem và nghe được.',
    'lobby.left': 'Bạn đã rời cuộc họp.',
    'lobby.invalid': 'Hãy nhập phòng họp và tên của bạn (mỗi mục từ 1 đến 64 ký tự).',

    'call.you': '{name} (bạn)',
    'call.screenOf': '{name} đang trình chiếu',
    'call.count': '{count} người trong cuộc họp',
    'call.alone': 'Hiện chỉ có bạn trong phòng. Người khác sẽ xuất hiện ngay khi tham gia.',
    'call.reconnecting': 'Đang kết nối lại…',
    'call.reconnectingDetail': 'Kết nối bị gián đoạn. Đang khôi phục, vui lòng chờ.',
    'call.joinedToast': '{name} đã tham gia',
    'call.leftToast': '{name} đã rời cuộc họp',

    'toolbar.micMute': 'Tắt micrô',
    'toolbar.micUnmute': 'Bật micrô',
    'toolbar.camOff': 'Tắt camera',
    'toolbar.camOn': 'Bật camera',
    'toolbar.share': 'Trình chiếu màn hình',
    'toolbar.stopShare': 'Dừng trình chiếu',
    'toolbar.leave': 'Rời cuộc họp',

    'tile.micOff': 'Micrô đang tắt',

    'quality.good': 'Kết nối tốt',
    'quality.fair': 'Kết nối trung bình',
    'quality.poor': 'Kết nối kém',
    'quality.unknown': 'Đang đo chất lượng kết nối…',
    'quality.detail': 'mất gói {loss}% · dao động trễ {jitter} ms · trễ khứ hồi {rtt} ms',

    'error.unsupported': 'Trình duyệt này không tham gia họp được. Hãy dùng phiên bản mới của Chrome, Edge hoặc Firefox.',
    'error.unreachable': 'Không kết nối được tới máy chủ họp. Hãy kiểm tra kết nối mạng rồi thử lại.',
    'error.connectionLost': 'Mất kết nối tới cuộc họp và không khôi phục được. Hãy kiểm tra mạng rồi tham gia lại.',
    'error.roomClosed': 'Cuộc họp đã kết thúc: máy chủ đã đóng phòng họp.',
    'error.versionMismatch': 'Trang này không khớp phiên bản với máy chủ. Hãy tải lại trang (Ctrl+F5) để dùng phiên bản hiện tại.',
    'error.mediaFailed': 'Đã kết nối tới máy chủ nhưng âm thanh và hình ảnh không truyền được. Có thể tường lửa đang chặn cổng truyền tải (UDP).',
    'error.roomFull': 'Phòng họp đã đủ người.',
    'error.invalidName': 'Tên phòng hoặc tên hiển thị không hợp lệ: hãy dùng từ 1 đến 64 ký tự in được.',
    'error.server': 'Máy chủ từ chối yêu cầu ({code}).',
    'error.permissionDenied': 'Camera và micrô đang bị chặn. Bạn vẫn có thể tham gia để xem và nghe; để mọi người thấy và nghe bạn, hãy cho phép trong cài đặt trang web của trình duyệt.',
    'error.noDevices': 'Không tìm thấy camera hoặc micrô. Bạn vẫn có thể tham gia để xem và nghe.',
    'error.deviceBusy': 'Camera hoặc micrô đang được chương trình khác sử dụng.',
    'error.shareFailed': 'Không bắt đầu trình chiếu màn hình được.',
  },
};

export const LANGUAGES = [
  { code: 'en', label: 'English' },
  { code: 'vi', label: 'Tiếng Việt' },
];

const STORAGE_KEY = 'meet.lang';
let current = 'en';

/** Picks the language: a saved choice, else the browser's preference, else English. */
export function detectLanguage(saved, preferred) {
  if (saved && STRINGS[saved]) return saved;
  for (const tag of preferred || []) {
    const base = String(tag).toLowerCase().split('-')[0];
    if (STRINGS[base]) return base;
  }
  return 'en';
}

export function language() {
  return current;
}

/** The string for `key` in the current language, with `{var}` placeholders filled in. */
export function t(key, vars = {}) {
  const text = STRINGS[current][key] ?? STRINGS.en[key] ?? key;
  return text.replace(/\{(\w+)\}/g, (_, name) => (name in vars ? String(vars[name]) : `{${name}}`));
}

/** Fills every `data-i18n*` element under `root`. */
export function translate(root) {
  for (const el of root.querySelectorAll('[data-i18n]')) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll('[data-i18n-placeholder]')) {
    el.placeholder = t(el.dataset.i18nPlaceholder);
  }
  for (const el of root.querySelectorAll('[data-i18n-title]')) {
    const text = t(el.dataset.i18nTitle);
    el.setAttribute('aria-label', text);
    if (el instanceof HTMLElement) el.title = text;
  }
}

/** Sets the language from the saved choice or the browser, and translates the document. */
export function initLanguage(override) {
  let saved = null;
  try {
    saved = localStorage.getItem(STORAGE_KEY);
  } catch {
    // Storage can be disabled; the browser's preference still applies.
  }
  current = detectLanguage(override || saved, navigator.languages || [navigator.language]);
  apply();
}

export function setLanguage(code) {
  if (!STRINGS[code]) return;
  current = code;
  try {
    localStorage.setItem(STORAGE_KEY, code);
  } catch {
    // Not remembered; still switched for this page.
  }
  apply();
}

function apply() {
  document.documentElement.lang = current;
  document.title = t('app.title');
  translate(document);
}
