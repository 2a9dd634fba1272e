() => {
  // The page's avatar, run once per page load. The router hands each speakable sentence of the reply
  // (#sayings, JSON: sentence, its TTS-ready text, emotion, and `seconds`: how long a voice takes to say it)
  // as soon as it is complete. A player says them one after another: the sentence as a caption under the
  // avatar, the stage's data-state "speaking", and a mouth shape (data-viseme) chosen from the text.
  // With "Speak replies" on, the browser's voice says it and its events lead; without a voice (speech off,
  // or a browser with none) the avatar still says it silently, for the sentence's estimated length.
  if (window.dhSpeech) return;
  const synth = window.speechSynthesis;
  const $ = (id) => document.getElementById(id);
  const bots = () => document.querySelectorAll('#chatbot [data-testid="bot"] .message-content');
  const VOICE_WAIT = 900;       // ms a voice may take to start before the sentence is said silently
  const VISEME_STEP = 120;      // ms per mouth shape
  // count: bot messages seen; said: sayings of the latest reply taken; started: of those, begun by a voice
  // muted: Stop (or a new message) silenced the latest reply: its later sentences are not said
  const st = {on: false, count: 0, said: 0, started: 0, queue: [], current: null, thinking: false, gen: 0,
              muted: false};
  const prefs = {voice: "", rate: 1};

  const stage = {
    el: () => $("avatar-stage"),
    set(state) { const el = this.el(); if (el && el.dataset.state !== state) el.dataset.state = state; },
    settle() { this.set(st.current ? "speaking" : st.thinking ? "thinking" : "idle"); },
    emotion(name) { const el = this.el(); if (el && name) el.dataset.emotion = name; },
    viseme(name) { const el = this.el(); if (el && el.dataset.viseme !== name) el.dataset.viseme = name; },
    caption(text) { const el = $("avatar-caption"); if (el && el.textContent !== text) el.textContent = text; },
    syllable() {  // a voice's word boundary: a quick nod, in time with the voice
      const el = this.el();
      if (!el) return;
      el.classList.add("syllable");
      clearTimeout(el._beat);
      el._beat = setTimeout(() => el.classList.remove("syllable"), 160);
    },
  };

  // A mouth shape for a character: closed on pauses and lip sounds, round for o/u, wide for e/i, open
  // for a; a Chinese character by its code (no pinyin here), so the mouth moves with the syllables.
  const visemeOf = (ch) => {
    if (!ch || /[\s，。！？、；：,.!?;:…“”"'（）()\-—]/.test(ch)) return "closed";
    const c = ch.toLowerCase();
    if (/[mbp]/.test(c)) return "closed";
    if (/[ouwq]/.test(c)) return "round";
    if (/[eiyx]/.test(c)) return "wide";
    if (/[a-z0-9]/.test(c)) return "open";
    return ["open", "round", "wide", "open"][ch.codePointAt(0) % 4];
  };
  let mouthClock = 0;
  const mouth = (text) => {
    clearInterval(mouthClock);
    const chars = Array.from(text || "");
    let i = 0;
    if (!chars.length) return stage.viseme("closed");
    mouthClock = setInterval(() => { stage.viseme(visemeOf(chars[i % chars.length])); i += 1; }, VISEME_STEP);
  };

  const isChinese = (text) => /[\u3400-\u9fff]/.test(text);
  const voiceFor = (lang) => {
    if (!synth) return null;
    const voices = synth.getVoices();
    return voices.find((v) => v.name === prefs.voice && v.lang.slice(0, 2) === lang.slice(0, 2))
      || voices.find((v) => v.lang.replace("_", "-") === lang) || null;
  };

  // The player: one sentence at a time, each ended by its voice or its clock.
  const next = () => {
    const gen = st.gen;
    const item = st.queue.shift();
    st.current = item || null;
    if (!item) { clearInterval(mouthClock); stage.viseme("closed"); stage.caption(""); stage.settle(); return; }
    st.thinking = false;
    stage.emotion(item.emotion);
    stage.caption(item.sentence);
    stage.settle();
    let over = false;
    const done = () => { if (!over && gen === st.gen) { over = true; next(); } };
    const silently = () => {
      mouth(item.sentence);
      setTimeout(done, Math.max(600, (item.seconds || item.sentence.length / 5) * 1000 / prefs.rate));
    };
    if (!st.on || !synth) return silently();
    const u = new SpeechSynthesisUtterance((item.speech || item.sentence).trim());
    u.lang = isChinese(u.text) ? "zh-CN" : "en-US";
    const voice = voiceFor(u.lang);
    if (voice) u.voice = voice;
    u.rate = prefs.rate;
    let started = false;
    const fallback = setTimeout(() => { if (!started && gen === st.gen) silently(); }, VOICE_WAIT);
    u.onstart = () => {
      if (gen !== st.gen) return;
      started = true; clearTimeout(fallback); st.started += 1; mouth(item.sentence);
    };
    u.onboundary = (event) => {   // the voice's own word boundaries lead the mouth
      if (gen !== st.gen) return;
      stage.viseme(visemeOf(u.text[(event && event.charIndex) || 0]));
      stage.syllable();
    };
    u.onend = u.onerror = () => { clearTimeout(fallback); if (started) done(); };
    synth.speak(u);
  };

  const latest = () => {
    const all = bots();
    return [all.length, all.length ? all[all.length - 1].innerText : ""];
  };
  const sayings = () => {
    const el = $("sayings");
    try { return JSON.parse((el && el.innerText) || "[]"); } catch (e) { return []; }
  };
  const check = () => {
    const [count] = latest();
    const items = sayings();
    if (count !== st.count || items.length < st.said) {
      Object.assign(st, {count: count, said: 0, started: 0, muted: false});
    }
    const fresh = items.slice(st.said);
    st.said = items.length;
    if (!fresh.length || st.muted) return;
    st.queue.push(...fresh);
    if (!st.current) next();
  };
  const readEmotion = () => {
    const line = $("answered-by");
    const m = line && /(?:feeling|情绪): (\w+)/.exec(line.innerText);
    if (m) stage.emotion(m[1]);
  };

  let queued = false;
  new MutationObserver(() => {
    if (!queued) { queued = true; setTimeout(() => { queued = false; check(); readEmotion(); }, 30); }
  }).observe(document.body, {childList: true, subtree: true, characterData: true});

  // Voice picker, rate, and a note when the browser has no voices; the language switch; focus.
  const fillVoices = () => {
    const select = $("dh-voice"), note = $("dh-voice-note");
    if (!select) return;
    const voices = synth ? synth.getVoices().filter((v) => /^(zh|en)/i.test(v.lang)) : [];
    select.innerHTML = "";
    select.hidden = voices.length === 0;
    for (const v of voices) select.add(new Option(`${v.name} (${v.lang})`, v.name));
    const zh = (document.documentElement.lang || "").startsWith("zh");
    if (note) note.textContent = voices.length ? "" : zh ? "此浏览器没有可用的语音：数字人会无声地说，并显示字幕。"
      : "This browser offers no voices: the avatar says replies silently, with captions.";
  };
  // The page's language is Gradio's own i18n: it follows the browser's, and Gradio's Settings dialog (its
  // footer) has the menu that switches it; the header's 中文 / EN button opens it there.
  document.addEventListener("click", (event) => {   // delegated: Gradio may render the header anew
    if (!event.target.closest || !event.target.closest("#dh-lang")) return;
    const open = document.querySelector("footer button.settings");
    if (open) open.click();
    const focus = (tries) => {
      const menu = document.querySelector('[role="dialog"] input[aria-label="Language"]');
      if (menu) { menu.scrollIntoView({block: "center"}); menu.focus({preventScroll: true}); }
      else if (tries > 0) setTimeout(() => focus(tries - 1), 100);
    };
    focus(20);
  });
  const wire = () => {
    const select = $("dh-voice"), rate = $("dh-rate"), mic = $("dh-mic");
    if (!select || !$("dh-lang")) return setTimeout(wire, 200);     // the page renders after this script runs
    fillVoices();
    if (synth) synth.addEventListener("voiceschanged", fillVoices);
    const zh = (document.documentElement.lang || navigator.language || "").startsWith("zh");
    if (rate.previousSibling) rate.previousSibling.textContent = zh ? "语速 " : "Rate ";
    mic.textContent = zh ? "语音输入" : "Voice input";
    mic.title = zh ? "说出你的问题" : "Speak your question";
    select.title = zh ? "声音" : "Voice";
    select.onchange = () => { prefs.voice = select.value; };
    rate.oninput = () => { prefs.rate = parseFloat(rate.value) || 1; };
    // A desktop kiosk types at once; a phone keeps its keyboard down and the page at the top.
    const box = document.querySelector("#message textarea");
    if (box && window.matchMedia("(pointer: fine)").matches) box.focus({preventScroll: true});
    const Recognition = window.SpeechRecognition || window.webkitSpeechRecognition;
    if (!Recognition || !mic) return;               // no speech recognition here: no microphone button
    mic.hidden = false;
    mic.onclick = () => {
      const rec = new Recognition();
      rec.lang = (document.documentElement.lang || "zh").startsWith("en") ? "en-US" : "zh-CN";
      rec.onresult = (event) => {
        const input = document.querySelector("#message textarea");
        input.value = event.results[0][0].transcript;
        input.dispatchEvent(new Event("input", {bubbles: true}));
        setTimeout(() => $("send").click(), 50);
      };
      rec.start();
    };
  };
  wire();

  window.dhSpeech = {
    enable(on) { st.on = on; Object.assign(st, {count: latest()[0], said: sayings().length});
                 if (!on && synth) synth.cancel(); },
    thinking(message) { if ((message || "").trim()) { st.thinking = true; stage.settle(); } },
    flush() { check(); st.thinking = false; stage.settle(); },
    // How many sentences of the latest reply were heard: those a voice began to say; -1 when speech is
    // off or there is no voice (the reply was read on the screen: all of it counts).
    spoken() { return st.on && synth && synth.getVoices().length ? st.started : -1; },
    stop() {
      st.gen += 1;      // what is under way ends without moving on
      if (synth) synth.cancel();
      Object.assign(st, {queue: [], current: null, thinking: false, muted: true});
      clearInterval(mouthClock); stage.viseme("closed"); stage.caption(""); stage.settle();
    },
  };
}
