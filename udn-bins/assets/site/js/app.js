// Shows which server answered, from the X-Served-By response header of the page.
document.addEventListener("DOMContentLoaded", () => {
  fetch(location.href, { method: "HEAD" }).then((r) => {
    const by = r.headers.get("x-served-by");
    if (by) document.getElementById("served-by").textContent = by;
  });
});
