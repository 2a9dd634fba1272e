() => {
  // The page's speech and its avatar, run once per page load.
  // "Speak replies": the browser's Web Speech API says each sentence of the reply as soon as the
  // router has it complete (#sayings: its TTS-ready text), while the text still streams. The avatar stage (#avatar-stage) shows
  // data-state = idle | thinking | speaking, driven by the speech events (start/boundary/end), and
  // data-emotion from the router's emotion tags (the status line's "feeling: joy").
  if (window.dhSpeech) return;
  const synth = window.speechSynthesis;
  // started: the sentences of the latest reply that a voice began to say (what Stop keeps)
  const st = {on: false, muted: false, count: 0, said: 0, seen: "", speaking: 0, thinking: false,
              streaming: false, quiet: 0, started: 0};
  const prefs = {voice: "", rate: 1};
  const $ = (id) => document.getElementById(id);
  const bots = () => document.querySelectorAll('#chatbot [data-testid="bot"] .message-content');

  const stage = {
    set(state) {
      const el = $("avatar-stage");
      if (el && el.dataset.state !== state) el.dataset.state = state;
    },
    settle() {    // what the avatar does when nothing is being said
      if (st.speaking > 0) return this.set("speaking");
      if (st.thinking) return this.set("thinking");
      this.set(st.streaming && !st.on ? "speaking" : "idle");   // silent: it mouths the streaming text
    },
    emotion(name) {
      const el = $("avatar-stage");
      if (el && name) el.dataset.emotion = name;
    },
    syllable() {  // a word boundary: a quicker mouth beat, in time with the voice
      const el = $("avatar-stage");
      if (!el) return;
      el.classList.add("syllable");
      clearTimeout(el._beat);
      el._beat = setTimeout(() => el.classList.remove("syllable"), 160);
    },
  };

  const isChinese = (text) => /[\u3400-\u9fff]/.test(text);
  const voiceFor = (lang) => {
    if (!synth) return null;
    const voices = synth.getVoices();
    return voices.find((v) => v.name === prefs.voice && v.lang.slice(0, 2) === lang.slice(0, 2))
      || voices.find((v) => v.lang.replace("_", "-") === lang) || null;
  };
  const say = (text, emotion) => {
    text = text.trim();
    if (!text || !synth) return;
    const u = new SpeechSynthesisUtterance(text);
    u.lang = isChinese(text) ? "zh-CN" : "en-US";
    const voice = voiceFor(u.lang);
    if (voice) u.voice = voice;
    u.rate = prefs.rate;
    let started = false;
    const reply = st.count;
    u.onstart = () => { started = true; st.speaking += 1; if (reply === st.count) st.started += 1; st.thinking = false; stage.emotion(emotion); stage.settle(); };
    u.onboundary = () => stage.syllable();
    u.onend = u.onerror = () => { if (started) st.speaking = Math.max(0, st.speaking - 1); stage.settle(); };
    synth.speak(u);
  };
  const latest = () => {
    const all = bots();
    return [all.length, all.length ? all[all.length - 1].innerText : ""];
  };
  // The router's sentences for the reply (#sayings, JSON): its splitter, TTS-ready text, emotion.
  const sayings = () => {
    const el = $("sayings");
    try { return JSON.parse((el && el.innerText) || "[]"); } catch (e) { return []; }
  };
  const check = () => {
    const [count, text] = latest();
    const items = sayings();
    if (count !== st.count || items.length < st.said) {
      Object.assign(st, {count: count, said: 0, muted: false, started: 0});
    }
    if (text.trim() && text !== st.seen) {     // the reply grew: without a voice, the avatar mouths it
      st.seen = text;
      if (!st.on) st.thinking = false;
      st.streaming = true;
      clearTimeout(st.quiet);
      st.quiet = setTimeout(() => { st.streaming = false; stage.settle(); }, 700);
      stage.settle();
    }
    const fresh = items.slice(st.said);
    st.said = items.length;
    if (!st.on || st.muted) {
      if (fresh.length) stage.emotion(fresh[fresh.length - 1].emotion);
      return;
    }
    for (const item of fresh) say(item.speech || item.sentence, item.emotion);
  };
  const readEmotion = () => {
    const line = $("answered-by");
    const m = line && /feeling: (\w+)/.exec(line.innerText);
    if (m) stage.emotion(m[1]);
  };

  let queued = false;
  new MutationObserver(() => {
    if (!queued) { queued = true; setTimeout(() => { queued = false; check(); readEmotion(); }, 30); }
  }).observe(document.body, {childList: true, subtree: true, characterData: true});

  // Voice picker, rate, and a note when the browser has no voices.
  const fillVoices = () => {
    const select = $("dh-voice"), note = $("dh-voice-note");
    if (!select) return;
    const voices = synth ? synth.getVoices().filter((v) => /^(zh|en)/i.test(v.lang)) : [];
    select.innerHTML = "";
    select.hidden = voices.length === 0;
    for (const v of voices) select.add(new Option(`${v.name} (${v.lang})`, v.name));
    if (note) note.textContent = voices.length ? "" :
      "This browser offers no speech voices: replies are shown, not spoken. 此浏览器没有可用的语音。";
  };
  const wire = () => {
    const select = $("dh-voice"), rate = $("dh-rate"), mic = $("dh-mic");
    if (!select) return setTimeout(wire, 200);     // the stage renders after this script runs
    fillVoices();
    if (synth) synth.addEventListener("voiceschanged", fillVoices);
    select.onchange = () => { prefs.voice = select.value; };
    rate.oninput = () => { prefs.rate = parseFloat(rate.value) || 1; };
    const Recognition = window.SpeechRecognition || window.webkitSpeechRecognition;
    if (!Recognition || !mic) return;               // no speech recognition here: no microphone button
    mic.hidden = false;
    mic.onclick = () => {
      const rec = new Recognition();
      rec.lang = navigator.language && navigator.language.startsWith("en") ? "en-US" : "zh-CN";
      rec.onresult = (event) => {
        const box = document.querySelector("#message textarea");
        box.value = event.results[0][0].transcript;
        box.dispatchEvent(new Event("input", {bubbles: true}));
        setTimeout(() => $("send").click(), 50);
      };
      rec.start();
    };
  };
  wire();

  window.dhSpeech = {
    enable(on) { st.on = on; Object.assign(st, {count: latest()[0], said: sayings().length});
                 if (!on && synth) synth.cancel(); },
    thinking(message) { if ((message || "").trim()) { st.thinking = true; st.streaming = false; stage.settle(); } },
    flush() { check(); st.thinking = false; st.streaming = false; stage.settle(); },
    // How many sentences of the latest reply were heard: those a voice began to say; -1 when the reply
    // was only shown (speech off, or a browser without voices), so all of it counts.
    spoken() { return st.on && synth && synth.getVoices().length ? st.started : -1; },
    stop() { if (synth) synth.cancel(); Object.assign(st, {muted: true, speaking: 0, thinking: false,
                                                          streaming: false}); stage.settle(); },
  };
}
