// Gallery view of the tile grid: every tile fits the stage (no scrolling), as large as
// the stage allows, and tiles that would get smaller than the minimum go on further
// pages. A tile on another page is not displayed, so the page pauses its video
// (quality.js: a tile not visible is paused) and the server forwards nothing for it.

/** Tiles keep the shape of the camera the page captures (640x480). */
const TILE_ASPECT = 4 / 3;
/**
 * The smallest tile before the grid pages: 160x120 CSS pixels. That is the lowest
 * simulcast layer (640x480 scaled down by 4), so a smaller tile saves no bandwidth,
 * and it is about the smallest size where a face and the name label stay legible.
 */
const MIN_TILE_WIDTH = 160;
const MIN_TILE_HEIGHT = MIN_TILE_WIDTH / TILE_ASPECT;

/**
 * The arrangement of `count` tiles of `aspect` (width / height) that makes them
 * largest in a `width` x `height` area with `gap` pixels between tiles:
 * {columns, rows, width, height} with whole-pixel tile sizes. Fewer columns win a tie.
 */
export function bestFit(count, width, height, gap, aspect = TILE_ASPECT) {
  let best = { columns: 1, rows: Math.max(count, 1), width: 0, height: 0 };
  for (let columns = 1; columns <= Math.max(count, 1); columns++) {
    const rows = Math.ceil(count / columns) || 1;
    const byWidth = (width - gap * (columns - 1)) / columns;
    const byHeight = ((height - gap * (rows - 1)) / rows) * aspect;
    const tileWidth = Math.floor(Math.min(byWidth, byHeight));
    if (tileWidth > best.width) {
      best = { columns, rows, width: tileWidth, height: Math.floor(tileWidth / aspect) };
    }
  }
  return best;
}

/** How many tiles of at least the minimum size fit in the area (at least one). */
export function pageCapacity(width, height, gap) {
  const columns = Math.floor((width + gap) / (MIN_TILE_WIDTH + gap));
  const rows = Math.floor((height + gap) / (MIN_TILE_HEIGHT + gap));
  return Math.max(1, columns) * Math.max(1, rows);
}

export class Gallery {
  /**
   * `stage` is the area the tiles must fit in; `grid` holds the tiles in order (the
   * first page shows the first ones); `pager` holds the `prev` and `next` buttons and
   * the `label` naming the page.
   */
  constructor({ stage, grid, pager, label, prev, next }) {
    this.stage = stage;
    this.grid = grid;
    this.pager = pager;
    this.pageLabel = label;
    this.prevButton = prev;
    this.nextButton = next;
    /** Index of the page shown (0 = first). */
    this.page = 0;
    this.pageCount = 1;
    this.prevButton.addEventListener("click", () => this.showPage(this.page - 1));
    this.nextButton.addEventListener("click", () => this.showPage(this.page + 1));
    // The stage's size changes with the window, the chat log and the controls; the
    // tiles' own size never changes the stage's, so this cannot loop.
    new ResizeObserver(() => this.update()).observe(this.stage);
  }

  showPage(page) {
    this.page = page;
    this.update();
  }

  /** Lay the tiles out again (after a resize, or a tile was added or removed). */
  update() {
    const tiles = [...this.grid.children].filter((el) => el.classList.contains("tile"));
    const style = getComputedStyle(this.stage);
    const px = (value) => parseFloat(value) || 0;
    const width = this.stage.clientWidth - px(style.paddingLeft) - px(style.paddingRight);
    const height = this.stage.clientHeight - px(style.paddingTop) - px(style.paddingBottom);
    if (width <= 0 || height <= 0) return; // not displayed (the join form is shown)
    const gap = px(getComputedStyle(this.grid).columnGap);
    const perPage = pageCapacity(width, height, gap);
    this.pageCount = Math.max(1, Math.ceil(tiles.length / perPage));
    this.page = Math.min(Math.max(this.page, 0), this.pageCount - 1);
    const first = this.page * perPage;
    const shown = tiles.slice(first, first + perPage);
    tiles.forEach((tile, index) => {
      tile.hidden = index < first || index >= first + perPage;
    });
    const fit = bestFit(shown.length, width, height, gap);
    this.grid.style.setProperty("--tile-width", `${fit.width}px`);
    this.grid.style.setProperty("--tile-height", `${fit.height}px`);
    this.grid.style.width = `${fit.columns * fit.width + (fit.columns - 1) * gap}px`;
    this.pager.hidden = this.pageCount <= 1;
    this.pageLabel.textContent = `${this.page + 1} / ${this.pageCount}`;
    this.prevButton.disabled = this.page === 0;
    this.nextButton.disabled = this.page === this.pageCount - 1;
  }
}
