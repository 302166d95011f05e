/**
 * The browser environment's task pages: self-contained HTML this project writes, one per task
 * family, laid out from a seed so the same task always looks the same and different tasks look
 * different. Each page keeps its own state in `window.__ts` and judges itself:
 *
 *   window.__ts.finished      the page reached an end (the target or a wrong button was pressed, ...)
 *   window.__ts.check()       { success, detail }: the reward is checked in the page, where the
 *                             state lives, not guessed from outside
 *
 * Families (params.family):
 *   click_button   click the button with the named label among several
 *   fill_form      type given values into named fields, then press Submit
 *   checkboxes     tick exactly the named boxes, then press Submit
 *   dropdown       open a dropdown, pick the named option, press Confirm
 *   tabs           switch to the named tab and press the named button in it
 *
 * Answer families (ANSWER_FAMILIES): the reply is the answer, not an action. The environment
 * hands the reply to the page (`window.__ts.answer(reply)`), which records it and judges it:
 *   read_digit     the page is filled with one digit (0 or 1), a grid of large bold glyphs drawn
 *                  only in pixels: the prompt says "Type the digit shown on the page." and
 *                  nothing else, so only a policy that sees the screenshot can beat a guess. The
 *                  first digit of the reply is the answer (as the text demo's copy_digit);
 *                  check() also says whether a wrong digit was given (`wrong`), so a wrong
 *                  answer can cost more than none.
 */
import { mulberry32, shuffle } from '../../util/random.js';

export const BROWSER_FAMILIES = ['click_button', 'fill_form', 'checkboxes', 'dropdown', 'tabs'] as const;
export type BrowserFamily = (typeof BROWSER_FAMILIES)[number];
/** Families whose reply is the answer itself (judged by the page), not a computer action. */
export const ANSWER_FAMILIES = ['read_digit'] as const;
export type AnswerFamily = (typeof ANSWER_FAMILIES)[number];
/** Every family a browser run may name (env_options.families). */
export type PageFamily = BrowserFamily | AnswerFamily;
export const PAGE_FAMILIES: readonly PageFamily[] = [...BROWSER_FAMILIES, ...ANSWER_FAMILIES];

/** The system prompt of answer families: no action language, and nothing about the answer. */
export const ANSWER_SYSTEM = 'You see a web page. Reply with the answer only.';

export const VIEWPORT = { width: 640, height: 480 };

const BUTTON_WORDS = ['Save', 'Cancel', 'Submit', 'Delete', 'Open', 'Close', 'Send', 'Next', 'Back', 'Apply', 'Reset', 'Search', 'Edit', 'Share', 'Print', 'Upload'];
const FIELDS: Array<{ name: string; values: string[] }> = [
  { name: 'Name', values: ['Ada Lovelace', 'Alan Turing', 'Grace Hopper', 'Edsger Dijkstra'] },
  { name: 'Email', values: ['ada@example.com', 'alan@example.org', 'grace@example.net', 'edsger@example.com'] },
  { name: 'City', values: ['Paris', 'Berlin', 'Lisbon', 'Oslo', 'Kyoto'] },
  { name: 'Phone', values: ['555-0101', '555-0199', '555-0123', '555-0142'] },
];
const FRUITS = ['Apple', 'Banana', 'Cherry', 'Grape', 'Lemon', 'Mango', 'Peach', 'Plum'];
const COLORS = ['Red', 'Green', 'Blue', 'Orange', 'Purple', 'Yellow', 'Black', 'White'];
const TABS: Array<{ tab: string; buttons: string[] }> = [
  { tab: 'Profile', buttons: ['Change photo', 'Edit bio'] },
  { tab: 'Billing', buttons: ['Download invoice', 'Update card'] },
  { tab: 'Security', buttons: ['Reset password', 'Enable 2FA'] },
  { tab: 'Team', buttons: ['Invite member', 'Leave team'] },
];

/** Task parameters: everything needed to render the page and to script a solution. */
export type BrowserTaskParams = { family: BrowserFamily; layoutSeed: number; instruction: string } & (
  | { family: 'click_button'; target: string; labels: string[] }
  | { family: 'fill_form'; fields: Array<{ name: string; value: string }> }
  | { family: 'checkboxes'; options: string[]; targets: string[] }
  | { family: 'dropdown'; options: string[]; target: string }
  | { family: 'tabs'; tabs: Array<{ tab: string; buttons: string[] }>; targetTab: string; target: string }
);

/**
 * An answer family's task: read_digit fills the page with `digit` (a glyph grid shifted by
 * (x, y)); the instruction is the same for every digit, so the digit is nowhere in the text the
 * policy reads.
 */
export type AnswerTaskParams = { family: 'read_digit'; layoutSeed: number; instruction: string; digit: number; x: number; y: number };

/** What a browser task page is rendered from: an action family's params or an answer family's. */
export type PageTaskParams = BrowserTaskParams | AnswerTaskParams;

export const READ_DIGIT_INSTRUCTION = 'Type the digit shown on the page.';
/**
 * read_digit's glyph grid. The tiny VL model sees a 640x480 screenshot as 9x6 image tokens
 * (resized to 288x192, one token per 32x32 px there: ~71x80 px of the page). One big glyph would
 * change a handful of them; a grid of 100 px glyphs, about one per token, changes every token
 * below the header, which a 2-layer model with random vision weights can tell apart (src/demo/
 * README.md, "The vision demo", has the measurements). src/demo/make_demo_model.py draws the
 * same grid for the demo model's answer-format warm start: keep the two in step.
 */
export const DIGIT_GRID = { fontPx: 100, columns: 8, rows: 5, pitchX: 84, pitchY: 88, top: 50 } as const;

export function isAnswerFamily(family: string): family is AnswerFamily {
  return (ANSWER_FAMILIES as readonly string[]).includes(family);
}

export function isAnswerTask(p: PageTaskParams): p is AnswerTaskParams {
  return isAnswerFamily(p.family);
}

/** The task of any page family for a seed. */
export function pageTaskParams(family: PageFamily, seed: number): PageTaskParams {
  if (!isAnswerFamily(family)) return browserTaskParams(family, seed);
  const rand = mulberry32(seed);
  const layoutSeed = Math.floor(rand() * 2 ** 31);
  const digit = Math.floor(rand() * 2);
  // The grid shifts from task to task (up to ~half a glyph), so no two tasks of a digit need
  // show the same pixels.
  const x = Math.round(rand() * 60) - 30;
  const y = Math.round(rand() * 30);
  return { family, layoutSeed, instruction: READ_DIGIT_INSTRUCTION, digit, x, y };
}

/** The task of a family for a seed: what to do and the distractors. */
export function browserTaskParams(family: BrowserFamily, seed: number): BrowserTaskParams {
  const rand = mulberry32(seed);
  const layoutSeed = Math.floor(rand() * 2 ** 31);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(rand() * xs.length)]!;
  switch (family) {
    case 'click_button': {
      const labels = shuffle(BUTTON_WORDS, rand).slice(0, 4 + Math.floor(rand() * 3));
      const target = pick(labels);
      return { family, layoutSeed, labels, target, instruction: `Click the button labelled "${target}".` };
    }
    case 'fill_form': {
      const fields = shuffle(FIELDS, rand).slice(0, 2 + Math.floor(rand() * 2)).map((f) => ({ name: f.name, value: pick(f.values) }));
      const list = fields.map((f) => `${f.name} = "${f.value}"`).join(', ');
      return { family, layoutSeed, fields, instruction: `Fill in the form: ${list}. Then press Submit.` };
    }
    case 'checkboxes': {
      const options = shuffle(FRUITS, rand).slice(0, 5);
      const targets = shuffle(options, rand).slice(0, 1 + Math.floor(rand() * 3));
      return { family, layoutSeed, options, targets, instruction: `Tick exactly these boxes: ${targets.join(', ')}. Then press Submit.` };
    }
    case 'dropdown': {
      const options = shuffle(COLORS, rand).slice(0, 5);
      const target = pick(options);
      return { family, layoutSeed, options, target, instruction: `Choose "${target}" in the Color dropdown, then press Confirm.` };
    }
    case 'tabs': {
      const tabs = shuffle(TABS, rand).slice(0, 3).map((t) => ({ tab: t.tab, buttons: shuffle(t.buttons, rand) }));
      const chosen = pick(tabs.slice(1)); // never the tab open at the start: switching is the task
      const target = pick(chosen.buttons);
      return { family, layoutSeed, tabs, targetTab: chosen.tab, target, instruction: `Open the "${chosen.tab}" tab and press "${target}".` };
    }
  }
}

const esc = (s: string) => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** Non-overlapping positions: cells of a grid, shuffled, jittered inside the cell. */
function slots(seed: number, n: number, top = 90): Array<{ x: number; y: number }> {
  const rand = mulberry32(seed);
  const cols = 3;
  const rows = 5;
  const cellW = (VIEWPORT.width - 40) / cols;
  const cellH = (VIEWPORT.height - top - 20) / rows;
  const cells = shuffle(Array.from({ length: cols * rows }, (_, i) => i), rand).slice(0, n);
  return cells.map((c) => ({ x: 20 + (c % cols) * cellW + rand() * (cellW - 170), y: top + Math.floor(c / cols) * cellH + rand() * (cellH - 40) }));
}

const at = (p: { x: number; y: number }) => `style="position:absolute;left:${Math.round(p.x)}px;top:${Math.round(p.y)}px"`;

const STYLE = `body{margin:0;font:15px sans-serif;background:#fafafa;width:${VIEWPORT.width}px;height:${VIEWPORT.height}px;overflow:hidden}
h1{font-size:17px;margin:0;padding:14px 20px;background:#1f3a5f;color:#fff}
button{font:15px sans-serif;padding:6px 14px;min-width:90px}
input[type=text]{font:15px sans-serif;width:150px;padding:4px}
label{display:inline-block;min-width:120px}
[role=tab]{padding:6px 16px;border:1px solid #888;background:#ddd;cursor:pointer}
[role=tab][aria-selected=true]{background:#fff;font-weight:bold}
[role=option]{padding:4px 10px;background:#fff;border:1px solid #ccc;width:130px;cursor:pointer}
.panel{display:none}.panel.active{display:block}`;

/** The page for a task, complete with its state and its own reward check. */
export function renderTaskPage(p: PageTaskParams): string {
  const body = renderBody(p);
  return `<!doctype html><html><head><meta charset="utf-8"><title>${esc(p.family)}</title><style>${STYLE}</style></head>
<body><h1 id="instruction">${esc(p.instruction)}</h1>${body.html}
<script>
window.__ts = { finished: false, events: [] };
${body.script}
</script></body></html>`;
}

function renderBody(p: PageTaskParams): { html: string; script: string } {
  const spec = JSON.stringify(p);
  switch (p.family) {
    case 'read_digit': {
      // aria-hidden: the glyph is pixels for the policy, not text (DESCRIBE_PAGE reads only the
      // instruction and interactive elements, so the observation text never holds the digit).
      const g = DIGIT_GRID;
      const glyphs = [];
      for (let row = 0; row < g.rows; row++) {
        for (let col = 0; col < g.columns; col++) {
          glyphs.push(`<div style="position:absolute;left:${p.x + col * g.pitchX}px;top:${g.top + p.y + row * g.pitchY}px">${p.digit}</div>`);
        }
      }
      const html = `<div id="digits" aria-hidden="true" style="font:bold ${g.fontPx}px/${g.fontPx}px 'DejaVu Sans',sans-serif;color:#000">${glyphs.join('')}</div>`;
      return {
        html,
        script: `const spec=${spec};
__ts.answer=(reply)=>{ if(__ts.finished) return __ts.answered; __ts.finished=true; const m=/[0-9]/.exec(String(reply)); __ts.answered=m?Number(m[0]):null; return __ts.answered; };
__ts.check=()=>({success: __ts.answered===spec.digit, wrong: __ts.answered!=null && __ts.answered!==spec.digit, detail: 'answered '+(__ts.answered??'nothing')});`,
      };
    }
    case 'click_button': {
      const pos = slots(p.layoutSeed, p.labels.length);
      const html = p.labels.map((l, i) => `<button data-label="${esc(l)}" ${at(pos[i]!)}>${esc(l)}</button>`).join('');
      return {
        html,
        script: `const spec=${spec};
document.querySelectorAll('button').forEach(b=>b.addEventListener('click',()=>{ if(__ts.finished) return; __ts.finished=true; __ts.clicked=b.dataset.label; }));
__ts.check=()=>({success: __ts.clicked===spec.target, detail: 'clicked '+(__ts.clicked??'nothing')});`,
      };
    }
    case 'fill_form': {
      const pos = slots(p.layoutSeed, p.fields.length + 1);
      const html = p.fields.map((f, i) => `<div ${at(pos[i]!)}><label for="f${i}">${esc(f.name)}</label><br><input type="text" id="f${i}" name="${esc(f.name)}" aria-label="${esc(f.name)}"></div>`).join('')
        + `<button id="submit" ${at(pos[p.fields.length]!)}>Submit</button>`;
      return {
        html,
        script: `const spec=${spec};
document.getElementById('submit').addEventListener('click',()=>{ if(__ts.finished) return; __ts.finished=true;
  __ts.values=spec.fields.map((f,i)=>document.getElementById('f'+i).value.trim()); });
__ts.check=()=>({success: !!__ts.values && spec.fields.every((f,i)=>__ts.values[i]===f.value), detail: JSON.stringify(__ts.values??null)});`,
      };
    }
    case 'checkboxes': {
      const pos = slots(p.layoutSeed, p.options.length + 1);
      const html = p.options.map((o, i) => `<div ${at(pos[i]!)}><input type="checkbox" id="c${i}" value="${esc(o)}"><label for="c${i}">${esc(o)}</label></div>`).join('')
        + `<button id="submit" ${at(pos[p.options.length]!)}>Submit</button>`;
      return {
        html,
        script: `const spec=${spec};
document.getElementById('submit').addEventListener('click',()=>{ if(__ts.finished) return; __ts.finished=true;
  __ts.ticked=[...document.querySelectorAll('input[type=checkbox]')].filter(c=>c.checked).map(c=>c.value).sort(); });
__ts.check=()=>({success: !!__ts.ticked && JSON.stringify(__ts.ticked)===JSON.stringify([...spec.targets].sort()), detail: JSON.stringify(__ts.ticked??null)});`,
      };
    }
    case 'dropdown': {
      const [toggle, confirm] = slots(p.layoutSeed, 2, 100);
      const html = `<div ${at(toggle!)}><label>Color</label><br><button id="toggle" aria-haspopup="listbox">Choose a color ▾</button>
<div id="list" role="listbox" style="display:none;position:absolute;z-index:2">${p.options.map((o) => `<div role="option" data-value="${esc(o)}">${esc(o)}</div>`).join('')}</div></div>
<button id="confirm" ${at(confirm!)}>Confirm</button>`;
      return {
        html,
        script: `const spec=${spec}; const list=document.getElementById('list'); const toggle=document.getElementById('toggle');
toggle.addEventListener('click',()=>{ list.style.display = list.style.display==='none' ? 'block' : 'none'; });
list.querySelectorAll('[role=option]').forEach(o=>o.addEventListener('click',()=>{ __ts.chosen=o.dataset.value; toggle.textContent=o.dataset.value+' ▾'; list.style.display='none'; }));
document.getElementById('confirm').addEventListener('click',()=>{ if(__ts.finished) return; __ts.finished=true; __ts.confirmed=__ts.chosen??null; });
__ts.check=()=>({success: __ts.confirmed===spec.target, detail: 'confirmed '+(__ts.confirmed??'nothing')});`,
      };
    }
    case 'tabs': {
      const rand = mulberry32(p.layoutSeed);
      const tabBar = `<div style="position:absolute;left:20px;top:70px">${p.tabs.map((t, i) => `<span role="tab" data-tab="${esc(t.tab)}" aria-selected="${i === 0}">${esc(t.tab)}</span>`).join(' ')}</div>`;
      const panels = p.tabs.map((t, i) => {
        const buttons = t.buttons.map((b, j) => `<button data-tab="${esc(t.tab)}" data-label="${esc(b)}" style="position:absolute;left:${40 + Math.round(rand() * 300)}px;top:${150 + j * 110 + Math.round(rand() * 50)}px">${esc(b)}</button>`).join('');
        return `<div class="panel${i === 0 ? ' active' : ''}" data-tab="${esc(t.tab)}">${buttons}</div>`;
      }).join('');
      return {
        html: tabBar + panels,
        script: `const spec=${spec};
document.querySelectorAll('[role=tab]').forEach(t=>t.addEventListener('click',()=>{
  document.querySelectorAll('[role=tab]').forEach(x=>x.setAttribute('aria-selected', String(x===t)));
  document.querySelectorAll('.panel').forEach(p=>p.classList.toggle('active', p.dataset.tab===t.dataset.tab)); }));
document.querySelectorAll('.panel button').forEach(b=>b.addEventListener('click',()=>{ if(__ts.finished) return; __ts.finished=true; __ts.pressed=[b.dataset.tab,b.dataset.label]; }));
__ts.check=()=>({success: !!__ts.pressed && __ts.pressed[0]===spec.targetTab && __ts.pressed[1]===spec.target, detail: JSON.stringify(__ts.pressed??null)});`,
      };
    }
  }
}

/**
 * The page's text observation, run inside the page: the instruction and every visible
 * interactive element with its role, label, state and the centre of its box (the coordinates a
 * click needs). A text-only model reads this; a vision model also gets the screenshot.
 */
export const DESCRIBE_PAGE = `(() => {
  const lines = [document.getElementById('instruction').textContent];
  const visible = (el) => { const r = el.getBoundingClientRect(); const s = getComputedStyle(el);
    return r.width > 0 && r.height > 0 && s.visibility !== 'hidden' && el.offsetParent !== null; };
  const centre = (el) => { const r = el.getBoundingClientRect(); return '(' + Math.round(r.x + r.width / 2) + ', ' + Math.round(r.y + r.height / 2) + ')'; };
  for (const el of document.querySelectorAll('button, input, [role=tab], [role=option]')) {
    if (!visible(el)) continue;
    let line;
    if (el.tagName === 'BUTTON') line = 'button "' + el.textContent.trim() + '"';
    else if (el.getAttribute('role') === 'tab') line = 'tab "' + el.textContent.trim() + '"' + (el.getAttribute('aria-selected') === 'true' ? ' selected' : '');
    else if (el.getAttribute('role') === 'option') line = 'option "' + el.textContent.trim() + '"';
    else if (el.type === 'checkbox') line = 'checkbox "' + (document.querySelector('label[for="' + el.id + '"]')?.textContent ?? el.value) + '" ' + (el.checked ? 'checked' : 'unchecked');
    else line = 'textbox "' + (el.getAttribute('aria-label') ?? el.name) + '" value="' + el.value + '"' + (document.activeElement === el ? ' focused' : '');
    lines.push(line + ' at ' + centre(el));
  }
  return lines.join('\\n');
})()`;
