// The Billing & Usage page's own script: dialogs, live validation of amounts, and
// focus after in-place updates. No build step, no dependencies besides htmx.
//
// Money is validated the way the server parses it (tollgate_core::Micros and
// TopupAmount): digits and strings, then BigInt cents. Never floats, so "10.1" is
// 1010 cents exactly and "20000" is compared as an integer.
(function () {
  "use strict";

  // ---- Amounts ------------------------------------------------------------

  // Text → { empty } | { error: "nan" | "decimals" } | { cents: BigInt }.
  function parseCents(text) {
    var trimmed = text.trim();
    if (trimmed === "") return { empty: true };
    var match = /^(-?)([0-9]+)(?:\.([0-9]+))?$/.exec(trimmed);
    if (!match) return { error: "nan" };
    var fraction = match[3] || "";
    // The server keeps 6 decimals and charges whole cents: "10.000" is fine, "10.001" is not.
    if (fraction.length > 6 || /[^0]/.test(fraction.slice(2))) return { error: "decimals" };
    var cents = BigInt(match[2]) * 100n + BigInt((fraction + "00").slice(0, 2));
    return { cents: match[1] === "-" ? -cents : cents };
  }

  // 123456n → "$1,234.56".
  function usd(cents) {
    var negative = cents < 0n;
    var magnitude = negative ? -cents : cents;
    var whole = (magnitude / 100n).toString().replace(/\B(?=([0-9]{3})+(?![0-9]))/g, ",");
    var fraction = (magnitude % 100n).toString().padStart(2, "0");
    return (negative ? "-" : "") + "$" + whole + "." + fraction;
  }

  function capitalise(text) {
    return text ? text.charAt(0).toUpperCase() + text.slice(1) : text;
  }

  // Shows (or clears) a field's problem: red outline, aria-invalid, the reason.
  function mark(input, errorElement, message) {
    if (message) {
      input.setAttribute("aria-invalid", "true");
      errorElement.textContent = message;
    } else {
      input.removeAttribute("aria-invalid");
      errorElement.textContent = "";
    }
  }

  // ---- Buy credits --------------------------------------------------------

  function topupCheck(form) {
    var input = form.querySelector("#topup-amount");
    var parsed = parseCents(input.value);
    var data = form.dataset;
    var message = null;
    if (parsed.error === "nan") message = data.msgNan;
    else if (parsed.error === "decimals") message = data.msgDecimals;
    else if (!parsed.empty) {
      if (parsed.cents < BigInt(data.minCents)) message = data.msgBelow;
      else if (parsed.cents > BigInt(data.maxCents)) message = data.msgAbove;
    }
    return { input: input, parsed: parsed, message: message, valid: !parsed.empty && !message };
  }

  function validateTopup(form) {
    var check = topupCheck(form);
    mark(check.input, form.querySelector("#topup-error"), check.message);
    form.querySelector("#topup-continue").disabled = !check.valid;
    return check;
  }

  function showStep(form, name) {
    form.querySelectorAll(".step").forEach(function (step) {
      step.hidden = step.dataset.step !== name;
    });
    form.dataset.confirmed = name === "confirm" ? "true" : "";
  }

  function toConfirm(form) {
    var check = validateTopup(form);
    if (!check.valid) return;
    form.querySelector("#topup-confirm-amount").textContent = usd(check.parsed.cents);
    var pay = form.querySelector("#topup-pay");
    if (pay.textContent.indexOf("Pay") === 0) pay.textContent = "Pay " + usd(check.parsed.cents);
    showStep(form, "confirm");
    pay.focus();
  }

  // ---- Auto-recharge ------------------------------------------------------

  function rechargeCheck(form) {
    var data = form.dataset;
    var enabled = form.querySelector("#recharge-enabled").checked;
    var thresholdInput = form.querySelector("#recharge-threshold");
    var targetInput = form.querySelector("#recharge-target");
    var threshold = parseCents(thresholdInput.value);
    var target = parseCents(targetInput.value);
    var thresholdMessage = null;
    var targetMessage = null;
    if (threshold.empty || threshold.error === "nan") thresholdMessage = data.msgNan;
    else if (threshold.error === "decimals") thresholdMessage = data.msgDecimals;
    else if (threshold.cents < BigInt(data.minThresholdCents)) thresholdMessage = data.msgThresholdBelow;
    else if (threshold.cents > BigInt(data.maxThresholdCents)) thresholdMessage = data.msgThresholdAbove;
    if (target.empty || target.error === "nan") targetMessage = data.msgNan;
    else if (target.error === "decimals") targetMessage = data.msgDecimals;
    else if (!thresholdMessage) {
      var least = threshold.cents + BigInt(data.minTopupCents);
      if (target.cents < least) {
        targetMessage = "must be at least " + usd(least) + ": the threshold plus the minimum top-up";
      } else if (target.cents > BigInt(data.maxTargetCents)) targetMessage = data.msgTargetAbove;
    }
    return {
      enabled: enabled,
      thresholdInput: thresholdInput,
      targetInput: targetInput,
      thresholdMessage: thresholdMessage && capitalise(thresholdMessage),
      targetMessage: targetMessage && capitalise(targetMessage),
      valid: !enabled || (!thresholdMessage && !targetMessage),
    };
  }

  function validateRecharge(form) {
    var check = rechargeCheck(form);
    check.thresholdInput.disabled = !check.enabled;
    check.targetInput.disabled = !check.enabled;
    mark(check.thresholdInput, form.querySelector("#threshold-error"), check.enabled ? check.thresholdMessage : null);
    mark(check.targetInput, form.querySelector("#target-error"), check.enabled ? check.targetMessage : null);
    var save = form.querySelector("#recharge-save");
    save.disabled = !check.valid;
    save.textContent = check.enabled ? "Save" : "Switch off";
    return check;
  }

  // ---- Dialogs ------------------------------------------------------------

  function openDialog(id) {
    var dialog = document.getElementById(id);
    if (!dialog || dialog.open) return;
    var form = dialog.querySelector("form");
    if (form && form.dataset.validate === "topup") {
      form.reset();
      showStep(form, "amount");
      validateTopup(form);
    }
    if (form && form.dataset.validate === "recharge") validateRecharge(form);
    dialog.showModal();
    var first = dialog.querySelector("input:not([type=hidden]):not([disabled])");
    if (first) first.focus();
  }

  document.addEventListener("click", function (event) {
    var opener = event.target.closest("[data-open-dialog]");
    if (opener && !opener.disabled) {
      event.preventDefault();
      openDialog(opener.getAttribute("data-open-dialog"));
      return;
    }
    var closer = event.target.closest("[data-close-dialog]");
    if (closer) {
      event.preventDefault();
      var dialog = closer.closest("dialog");
      if (dialog) dialog.close();
      return;
    }
    if (event.target.id === "topup-continue") {
      event.preventDefault();
      toConfirm(event.target.closest("form"));
      return;
    }
    if (event.target.id === "topup-back") {
      event.preventDefault();
      var form = event.target.closest("form");
      showStep(form, "amount");
      form.querySelector("#topup-amount").focus();
    }
  });

  document.addEventListener("input", function (event) {
    var form = event.target.form;
    if (!form) return;
    if (form.dataset.validate === "topup") validateTopup(form);
    if (form.dataset.validate === "recharge") validateRecharge(form);
  });

  document.addEventListener("change", function (event) {
    var form = event.target.form;
    if (form && form.dataset.validate === "recharge") validateRecharge(form);
  });

  // Enter in the amount field goes to the confirmation, never straight to payment.
  document.addEventListener("keydown", function (event) {
    if (event.key !== "Enter" || event.target.id !== "topup-amount") return;
    event.preventDefault();
    toConfirm(event.target.form);
  });

  function mayProceed(form) {
    if (form.dataset.validate === "topup") return form.dataset.confirmed === "true" && topupCheck(form).valid;
    if (form.dataset.validate === "recharge") return rechargeCheck(form).valid;
    return true;
  }

  // Without htmx (still loading) the form posts normally; either way only a valid one.
  document.addEventListener("submit", function (event) {
    if (!mayProceed(event.target)) event.preventDefault();
  });
  document.addEventListener("htmx:beforeRequest", function (event) {
    var element = event.detail.elt;
    if (element && element.tagName === "FORM" && !mayProceed(element)) event.preventDefault();
  });

  // ---- After in-place updates ---------------------------------------------

  function focusMessage() {
    var message = document.getElementById("flash-message");
    var flash = document.getElementById("flash");
    if (message && flash) flash.focus();
  }

  document.addEventListener("htmx:afterSwap", function (event) {
    if (event.detail.target && event.detail.target.id === "billing-main") focusMessage();
  });

  document.addEventListener("htmx:responseError", function (event) {
    var live = document.getElementById("live");
    if (!live) return;
    var text = "That did not work. Reload the page and try again.";
    try {
      var page = new DOMParser().parseFromString(event.detail.xhr.responseText, "text/html");
      var message = page.getElementById("error-message");
      if (message) text = message.textContent;
    } catch (ignored) {
      // Keep the generic message.
    }
    live.textContent = text;
    document.querySelectorAll("dialog[open]").forEach(function (dialog) { dialog.close(); });
  });

  document.addEventListener("DOMContentLoaded", function () {
    // A message from a hosted page's return is shown once: a reload shows the plain page.
    var url = new URL(window.location.href);
    var once = ["payment_method", "topup", "topup_status", "failure_code"];
    var changed = false;
    once.forEach(function (name) {
      if (url.searchParams.has(name)) {
        url.searchParams.delete(name);
        changed = true;
      }
    });
    if (changed) window.history.replaceState(null, "", url.pathname + url.search + url.hash);
    focusMessage();
  });
})();
