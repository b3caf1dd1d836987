"""The instruction phrasings of `instruct`: ``TEMPLATES[skill][kind][lang]`` holds `N_PHRASINGS` phrasings of
one kind of question (template id ``"skill/k"``: the k-th phrasing, whatever the kind); the last is held out.
Slots: ``{a}``/``{b}`` objects, ``{rel}`` a relation, ``{things}`` what is counted, ``{q}``/``{Q}`` an inner
question (lower/upper case first letter), ``{pos}`` a position, ``{attr}`` an attribute."""

from __future__ import annotations

N_PHRASINGS = 5

Phrasings = dict[str, tuple[str, ...]]

TEMPLATES: dict[str, dict[str, Phrasings]] = {
    "describe": {"any": {
        "en": ("Describe the picture.", "What do you see in this image?", "Give a short description of the image.",
               "Tell me what is in the picture.", "Write one sentence about this image."),
        "zh": ("描述一下这张图片。", "你在图中看到了什么？", "简要描述这张图。", "告诉我图片里有什么。",
               "用一句话介绍这张图片。")}},
    "count": {"any": {
        "en": ("How many {things} are there?", "Count the {things} in the picture.",
               "What is the number of {things} in the image?", "Tell me how many {things} you can see.",
               "How many {things} does this image contain?"),
        "zh": ("图中有几个{things}？", "数一数图中的{things}。", "图片里{things}的数量是多少？",
               "告诉我你能看到几个{things}。", "这张图包含多少个{things}？")}},
    "compare": {
        "size": {
            "en": ("Is the {a} bigger than the {b}?", "Is the {a} larger than the {b}?",
                   "Compared with the {b}, is the {a} bigger?", "Does the {a} look bigger than the {b}?",
                   "Would you say the {a} is bigger than the {b}?"),
            "zh": ("{a}比{b}大吗？", "{a}是不是比{b}大？", "和{b}相比，{a}更大吗？", "{a}看起来比{b}大吗？",
                   "你觉得{a}比{b}大吗？")},
        "color": {
            "en": ("Are the {a} and the {b} the same color?", "Do the {a} and the {b} have the same color?",
                   "Is the {a} the same color as the {b}?", "Do the {a} and the {b} share a color?",
                   "Are the {a} and the {b} colored the same?"),
            "zh": ("{a}和{b}的颜色一样吗？", "{a}和{b}是同一种颜色吗？", "{a}的颜色和{b}相同吗？",
                   "{a}与{b}颜色相同吗？", "{a}跟{b}是一个颜色吗？")}},
    "relation": {
        "what": {
            "en": ("What is {rel} the {b}?", "Which shape is {rel} the {b}?", "Tell me what is {rel} the {b}.",
                   "What do you see {rel} the {b}?", "Name the object {rel} the {b}."),
            "zh": ("{b}的{rel}是什么？", "{b}的{rel}是哪个图形？", "告诉我{b}的{rel}有什么。",
                   "你在{b}的{rel}看到了什么？", "说出{b}{rel}的图形。")},
        "yesno": {
            "en": ("Is the {a} {rel} the {b}?", "Is the {a} located {rel} the {b}?",
                   "Can you confirm that the {a} is {rel} the {b}?", "Does the {a} sit {rel} the {b}?",
                   "Is it true that the {a} is {rel} the {b}?"),
            "zh": ("{a}在{b}的{rel}吗？", "{a}位于{b}的{rel}吗？", "请确认：{a}在{b}的{rel}吗？",
                   "{a}是不是在{b}的{rel}？", "{a}在{b}的{rel}，对吗？")}},
    "format": {
        "word": {
            "en": ("Answer with one word: {q}", "In one word, {q}", "{Q} Reply with a single word.",
                   "Using only one word, {q}", "Give a one-word answer. {Q}"),
            "zh": ("用一个词回答：{q}", "请用一个词回答：{q}", "{q}只用一个词回答。", "一个词回答就好：{q}",
                   "回答限一个词。{q}")},
        "caps": {
            "en": ("Answer in capital letters: {q}", "{Q} Write your answer in all caps.",
                   "Reply using only uppercase letters. {Q}", "In capital letters, {q}",
                   "Respond in upper case: {q}"),
            "zh": ("用英文大写字母回答：{q}", "{q}请用英文大写字母作答。", "只用英文大写字母回答。{q}",
                   "请以英文大写形式回答：{q}", "答案请写成英文大写：{q}")},
        "json": {
            "en": ("Reply in JSON with keys color and shape for the object {pos}.",
                   "Give the color and shape of the object {pos} as a JSON object with keys color and shape.",
                   "Describe the object {pos} in JSON, using the keys color and shape.",
                   "Return a JSON object with the keys color and shape for the object {pos}.",
                   "Output JSON (keys: color, shape) for the object {pos}."),
            "zh": ("用JSON回答{pos}的颜色和形状，键为color和shape。", "以JSON对象给出{pos}的颜色和形状，键为color和shape。",
                   "用JSON描述{pos}，使用color和shape两个键。", "返回一个包含color和shape键的JSON，描述{pos}。",
                   "输出{pos}的JSON（键：color、shape）。")},
        "list": {
            "en": ("List the shapes you see, separated by commas.",
                   "Which shapes are in the picture? Answer as a comma-separated list.",
                   "Name every shape in the image, separated by commas.",
                   "Give a comma-separated list of the shapes in the picture.",
                   "Write the shapes in this image as a list, with commas between them."),
            "zh": ("列出你看到的图形，用逗号分隔。", "图中有哪些形状？请用逗号分隔的列表回答。", "说出图中的每个形状，用逗号隔开。",
                   "用逗号分隔，列出图片中的形状。", "把这张图里的形状写成列表，中间用逗号。")}},
    "followup": {"any": {
        "en": ("And what {attr} is it?", "What is its {attr}?", "What about its {attr}?",
               "Tell me its {attr} as well.", "And its {attr}?"),
        "zh": ("那它是什么{attr}？", "它的{attr}是什么？", "那它的{attr}呢？", "也说说它的{attr}。", "它的{attr}怎么样？")}},
}

# POPE asks one way (its settings differ in which absent objects are named, not in the wording)
POPE_PHRASES = {"en": "Is there {obj} in the image?", "zh": "图中有{obj}吗？"}

__all__ = ["N_PHRASINGS", "POPE_PHRASES", "TEMPLATES"]
